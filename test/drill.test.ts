import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { copyFile, readFile, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import postgres from "postgres";
import { serverUrl, urlFor, type TestDatabase } from "./support/db.ts";
import { shinkei, takeBackup as takeBackupWith } from "./support/cli.ts";
import { backupFolder, seededDatabase, slowToLoad } from "./support/backup.ts";
import { Service } from "./support/process.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { parseBackupName } from "../src/storage/naming.ts";

let db: TestDatabase;
let env: Record<string, string>;
/*
 * Drills make their scratch databases on a server of this file's own (DRILL_DATABASE_URL): these
 * tests count the scratch databases on the whole server, and test files running beside this one
 * (bun test --parallel) drill on the shared server.
 */
let drillServer: TestCluster;
let drillUrl: string;
let dir: string;
/** A backup of `db` the binary took once for the file (the database does not change between tests). */
let shared: string;

const scratchDatabases = async () => {
  const a = postgres(drillUrl, { max: 1 });
  try {
    return (await a`select datname from pg_database where datname like 'shinkei\\_drill\\_%'`).map(
      (r) => r.datname as string,
    );
  } finally {
    await a.end();
  }
};
const takeBackup = () => takeBackupWith(env);
/**
 * This test's own copy of the shared backup, in its own folder: what taking one would leave there, without
 * another pg_dump per test. Tests that alter it alter only their copy.
 */
const aBackup = async () => {
  const file = join(dir, basename(shared));
  await copyFile(shared, file);
  await copyFile(`${shared}.manifest.json`, `${file}.manifest.json`);
  return file;
};

beforeAll(async () => {
  [db, drillServer] = await Promise.all([seededDatabase("drill"), startCluster()]);
  drillUrl = drillServer.url();
  shared = await takeBackupWith((await backupFolder(db, "drill-shared")).env);
});
beforeEach(async () => {
  ({ dir, env } = await backupFolder(db, "drill", { DRILL_DATABASE_URL: drillUrl }));
});
afterAll(async () => {
  await db?.drop();
  await drillServer?.stop();
});

describe("restore drills", () => {
  test("a good backup passes; the result is kept and shown by --list; backup check then passes", async () => {
    const file = await takeBackup();
    const manifest = JSON.parse(await readFile(`${file}.manifest.json`, "utf8"));
    expect(Object.keys(manifest.digests)).toEqual(Object.keys(manifest.counts));
    let check = await shinkei(["backup", "check"], env);
    expect(check.code).toBe(1);
    expect(check.stderr).toContain("no backup has passed a restore drill yet");

    const r = await shinkei(["backup", "drill"], env);
    expect(r).toSucceed();
    expect(r.stdout).toMatch(/^✔ passed  shinkei_backup_\S+ restored on/m);
    const list = JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
    expect(list[0].drill).toMatchObject({ passed: true, differences: [] });
    check = await shinkei(["backup", "check"], env);
    expect(check).toSucceed();
    expect(check.stdout).toContain("passed a restore drill");
    expect(await scratchDatabases()).toEqual([]);
  });

  test("cleanup drops only scratch databases a drill made: `_` is no wildcard, real shinkei_drill_ stays", async () => {
    const tail = crypto.randomUUID().slice(0, 8);
    const others = [`shinkeiXdrillX${tail}`, `shinkei_drill_reports_${tail}`, `shinkei_drill_${tail}`];
    const leftover = `shinkei_drill_${Date.now().toString(36)}_${tail}`; // what a crashed drill leaves
    const a = postgres(drillUrl, { max: 1, onnotice: () => {} });
    try {
      for (const name of [...others, leftover]) await a`create database ${a(name)}`;
      await aBackup();
      expect(await shinkei(["backup", "drill"], env)).toSucceed();
      const left = (await a`select datname from pg_database where datname = any(${[...others, leftover]})`).map(
        (r) => r.datname as string,
      );
      expect(left.sort()).toEqual([...others].sort());
    } finally {
      for (const name of [...others, leftover]) await a`drop database if exists ${a(name)}`;
      await a.end();
    }
  });

  test("a file altered after its manifest was written fails, naming the table", async () => {
    const file = await aBackup();
    const sqlText = Buffer.from(Bun.zstdDecompressSync(await readFile(file))).toString();
    const altered = Buffer.from(
      Bun.zstdCompressSync(Buffer.from(sqlText.replace("beat 2 of drill", "beat 2 of DRILL"))),
    );
    await writeFile(file, altered);
    // Keep the checksum consistent, as a tool rewriting both would: only the drill can notice.
    const manifest = JSON.parse(await readFile(`${file}.manifest.json`, "utf8"));
    await writeFile(
      `${file}.manifest.json`,
      JSON.stringify({
        ...manifest,
        sizeBytes: altered.length,
        sha256: new Bun.CryptoHasher("sha256").update(altered).digest("hex"),
      }),
    );
    const r = await shinkei(["backup", "drill", file], env);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("story_beats: content differs from what the backup recorded");
    const check = await shinkei(["backup", "check"], env);
    expect(check.code).toBe(1);
    expect(check.stderr).toContain("failed its restore drill");
  });

  test("a manifest whose counts disagree fails", async () => {
    const file = await aBackup();
    const manifest = JSON.parse(await readFile(`${file}.manifest.json`, "utf8"));
    manifest.counts.worlds += 1;
    await writeFile(`${file}.manifest.json`, JSON.stringify(manifest));
    const r = await shinkei(["backup", "drill", "--json"], env);
    expect(r.code).toBe(1);
    const result = JSON.parse(r.stdout);
    expect(result.passed).toBe(false);
    expect(result.differences).toEqual([
      `worlds: ${manifest.counts.worlds - 1} rows restored, the backup recorded ${manifest.counts.worlds}`,
    ]);
  });

  test("SIGKILL during a drill leaves a scratch database that the next drill removes", async () => {
    const slow = await aBackup();
    await slowToLoad(slow, 30);
    const p = await Service.start(["backup", "drill"], env);
    for (let i = 0; i < 200 && (await scratchDatabases()).length === 0; i++) await Bun.sleep(50);
    expect((await scratchDatabases()).length).toBe(1);
    // While it loads (and after a kill), the scratch holds the file's code: no one but its own role
    // may connect (PUBLIC has no CONNECT), and that role is no superuser.
    const access = async () => {
      const a = postgres(drillUrl, { max: 1 });
      try {
        return await a`select d.datacl::text[] as acl, r.rolsuper as "ownerIsSuperuser",
            has_database_privilege('public', d.oid, 'CONNECT') as "publicConnects",
            exists (select 1 from pg_stat_activity s where s.datid = d.oid and s.usename = r.rolname
              and s.application_name = 'shinkei restore (load)') as loading
          from pg_database d join pg_roles r on r.oid = d.datdba where d.datname like 'shinkei\\_drill\\_%'`;
      } finally {
        await a.end();
      }
    };
    for (let i = 0; i < 200 && !(await access())[0]?.loading; i++) await Bun.sleep(50);
    const [scratch] = await access();
    expect(scratch).toMatchObject({ loading: true, ownerIsSuperuser: false, publicConnects: false });
    expect(scratch!.acl.filter((entry: string) => entry.startsWith("="))).toEqual([]);
    await p.stop("SIGKILL");
    expect((await access())[0]).toMatchObject({ ownerIsSuperuser: false, publicConnects: false });
    expect((await scratchDatabases()).length).toBe(1);
    // The next drill takes the newest, which loads at full speed: one named in a later second than the
    // slowed copy (by now the clock has almost always left that second already).
    const slowSecond = parseBackupName(basename(slow))!.takenAt.getTime();
    await Bun.sleep(Math.max(0, slowSecond + 1000 - Date.now()));
    const newest = await takeBackup();
    expect(parseBackupName(basename(newest))!.takenAt.getTime()).toBeGreaterThan(slowSecond);
    const r = await shinkei(["backup", "drill"], env);
    expect(r).toSucceed();
    expect(await scratchDatabases()).toEqual([]);
  });

  test("SIGTERM during a drill drops its scratch database, records nothing and exits 130", async () => {
    const file = await aBackup();
    await slowToLoad(file, 30);
    const p = await Service.start(["backup", "drill"], env);
    // This drill's own scratch database (its lock names its pid), loading.
    const loading = async () => {
      const a = postgres(drillUrl, { max: 1 });
      try {
        return (
          (await a`select 1 from pg_stat_activity where application_name = ${`shinkei the drill (pid ${p.proc.pid})`}`)
            .length > 0 && (await scratchDatabases()).length === 1
        );
      } finally {
        await a.end();
      }
    };
    for (let i = 0; i < 200 && !(await loading()); i++) await Bun.sleep(50);
    expect(await loading()).toBe(true);
    const code = await p.stop("SIGTERM");
    const stderr = await p.stderr();
    expect({ code, stderr }).toEqual({
      code: 130,
      stderr: expect.stringContaining("was cancelled; its scratch database was dropped"),
    });
    expect(await scratchDatabases()).toEqual([]);
    expect(await Bun.file(`${file}.drill.json`).exists()).toBe(false);
  });

  test("without CREATEDB: a clear error naming the privilege and DRILL_DATABASE_URL", async () => {
    await aBackup();
    const role = `shinkei_test_nocreate_${crypto.randomUUID().slice(0, 6)}`;
    const a = postgres(serverUrl, { max: 1, onnotice: () => {} });
    await a`create role ${a(role)} login nocreatedb`;
    try {
      const u = new URL(urlFor("postgres"));
      u.username = role;
      const r = await shinkei(["backup", "drill"], { ...env, DRILL_DATABASE_URL: u.toString() });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("the drill needs the CREATEDB privilege");
      expect(r.stderr).toContain("DRILL_DATABASE_URL");
    } finally {
      await a`drop role ${a(role)}`;
      await a.end();
    }
  });

  test("scheduled drills run on their schedule and their results appear in --list --json", async () => {
    await aBackup();
    const s = await Service.start(["backup-service"], {
      ...env,
      BACKUP_SCHEDULE: "0 0 1 1 *",
      BACKUP_DRILL_SCHEDULE: "*/2 * * * * *",
    });
    try {
      const passed = await s.waitFor((l) => l.msg === "drill passed");
      expect(passed.differences).toEqual([]);
    } finally {
      expect(await s.stop()).toBe(0);
    }
    const list = JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
    expect(list[0].drill.passed).toBe(true);
    expect(await scratchDatabases()).toEqual([]);
  });
});
