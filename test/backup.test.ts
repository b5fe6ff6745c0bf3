import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readdir, readFile, writeFile, rm, truncate, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { snapshot, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { shinkei, takeBackup as takeBackupWith } from "./support/cli.ts";
import { backupFolder, copyBackup, seededDatabase, stockDump } from "./support/backup.ts";
import { pathWith, seedSample, tempDir, wrapTool } from "./support/fixtures.ts";
import { Service } from "./support/process.ts";
import { Terminal } from "./support/pty.ts";
import { until } from "./support/wait.ts";
import { migrations } from "../src/migrations/index.ts";
import { backupName } from "../src/storage/naming.ts";

let db: TestDatabase;
let dir: string;
let env: Record<string, string>;

const backups = async () =>
  (await readdir(dir))
    .filter((n) => n.startsWith("shinkei_backup_") && !n.includes(".manifest") && !n.endsWith(".partial"))
    .sort();
const listJson = async () => JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
const takeBackup = () => takeBackupWith(env);
const dump = (file: string, args: string[] = []) => stockDump(db.url, file, args);

/*
 * A server of this file's own: a restore refuses to commit when any database's row in pg_database
 * changed during its load, and test files running beside this one (bun test --parallel) create and
 * drop databases on the shared server all the time.
 */
let server: TestCluster;

beforeAll(async () => {
  server = await startCluster();
  db = await seededDatabase("backup", "a", server.url());
});
beforeEach(async () => {
  ({ dir, env } = await backupFolder(db, "backups"));
});
afterAll(async () => {
  await db.drop();
  await server.stop();
});

describe("backup and restore", () => {
  test("backup, change data, restore: every row as it was", async () => {
    const before = await snapshot(db.sql);
    const file = await takeBackup();
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const manifest = JSON.parse(await readFile(`${file}.manifest.json`, "utf8"));
    expect(manifest).toMatchObject({
      reason: "manual",
      database: db.name,
      schemaVersion: migrations.at(-1)!.version,
      format: "plain+zstd",
    });
    expect(manifest.counts).toMatchObject({ users: 3, worlds: 3, stories: 6, story_beats: 30, sessions: 1 });
    expect(manifest.sha256).toBe(new Bun.CryptoHasher("sha256").update(await readFile(file)).digest("hex"));

    await seedSample(db.sql, "b", 2);
    await db.sql`update story_beats set content = 'changed'`;
    await db.sql`create table stray (id int)`; // not in the backup: must be gone afterwards

    const r = await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    expect(r.stdout).toContain("counts match the manifest");
    expect(await snapshot(db.sql)).toEqual(before);
    const [stray] = await db.sql`select to_regclass('public.stray') as t`;
    expect(stray!.t).toBeNull();
    // The public schema as initdb makes it, comment included: a dump taken now matches the one restored.
    const [schema] = await db.sql`select obj_description('public'::regnamespace, 'pg_namespace') as comment`;
    expect(schema!.comment).toBe("standard public schema");
    // The pre-restore safety backup holds the state we replaced.
    const list = await listJson();
    const safety = list.find((b: { reason: string }) => b.reason === "pre-restore");
    expect(safety.counts.users).toBe(5);
  });

  test("a second --restore takes the newest backup that is not a safety copy", async () => {
    const file = await takeBackup();
    await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], env);
    const r = await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], env);
    expect(r.stdout).toContain(`restored       ${file.split("/").pop()}`);
  });

  test("one folder for two databases: a restore takes the newest of its own, never the other's", async () => {
    const other = await seededDatabase("backup_other", "o", server.url());
    try {
      const mine = await takeBackup();
      // Newer, in the same folder (a later second, or the same one with a higher sequence): the other database's.
      const theirs = await takeBackupWith({ ...env, DATABASE_URL: other.url });
      expect(theirs).not.toBe(mine);
      const before = await snapshot(db.sql);
      await db.sql`update story_beats set content = 'changed'`;
      const r = await shinkei(
        ["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name],
        env,
      );
      expect(r).toSucceed();
      expect(r.stdout).toContain(`restored       ${basename(mine)}`);
      expect(await snapshot(db.sql)).toEqual(before);

      // Only the other database's backups there: refused, naming it; nothing changed.
      const kept = await copyBackup(mine, await tempDir("backups-mine"));
      for (const f of await readdir(dir)) if (!f.startsWith(basename(theirs))) await rm(join(dir, f));
      await db.sql`update story_beats set content = 'changed again'`;
      const changed = await snapshot(db.sql);
      const refused = await shinkei(
        ["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name],
        env,
      );
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain(`no backups of "${db.name}" in ${dir} (the newest is of "${other.name}")`);
      expect(refused.stderr).toContain("--backup-file");
      expect(await snapshot(db.sql)).toEqual(changed);
      // Named, it is the operator's choice.
      const named = await shinkei(
        ["backup", "--restore", "--backup-file", theirs, "--allow-superuser", "--yes", "--confirm-database", db.name],
        env,
      );
      expect(named).toSucceed();
      expect(await snapshot(db.sql)).toEqual(await snapshot(other.sql));
      // Back to its own, as the file's other tests expect it.
      const back = await shinkei(
        ["backup", "--restore", "--backup-file", kept, "--allow-superuser", "--yes", "--confirm-database", db.name],
        env,
      );
      expect(back).toSucceed();
      expect(await snapshot(db.sql)).toEqual(before);
    } finally {
      await other.drop();
    }
  });

  test("restore without a terminal and without --yes is refused, nothing changed", async () => {
    await takeBackup();
    await db.sql`insert into worlds (owner_id, name) select id, 'kept' from users limit 1`;
    const before = await snapshot(db.sql);
    const r = await shinkei(["backup", "--restore", "--allow-superuser"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`without a confirmation`);
    expect(r.stderr).toContain(`--yes --confirm-database ${db.name}`);
    expect(await snapshot(db.sql)).toEqual(before);
    await db.sql`delete from worlds where name = 'kept'`;
  });

  test("in a terminal, restore asks for the database name: a wrong one changes nothing, the right works", async () => {
    const before = await snapshot(db.sql);
    await takeBackup();
    await db.sql`insert into worlds (owner_id, name) select id, 'typed' from users limit 1`;
    const changed = await snapshot(db.sql);
    for (const [typed, code] of [
      [db.name.toUpperCase(), 1],
      [db.name, 0],
    ] as const) {
      const t = await Terminal.start(["backup", "--restore", "--allow-superuser"], { ...env, NO_COLOR: "1" });
      try {
        const screen = await t.waitFor(`Type ${db.name} to continue`);
        expect(screen).toMatch(/worlds\s+4\s+3/); // now and in the backup, side by side
        await t.type(typed);
        await t.enter();
        expect(await t.exitCode()).toBe(code);
      } finally {
        await t.close();
      }
      expect(await snapshot(db.sql)).toEqual(code === 0 ? before : changed);
    }
  });

  test("stock pg_dump files restore through --backup-file: .sql, .sql.gz, .sql.zst and custom .dump", async () => {
    const before = await snapshot(db.sql);
    const plain = join(dir, "shinkei_backup_20251121_090000.sql");
    await dump(plain);
    const custom = join(dir, "old.dump");
    await dump(custom, ["-Fc"]);
    const gz = join(dir, "old.sql.gz");
    await Bun.write(gz, Bun.gzipSync(await readFile(plain)));
    const zst = join(dir, "old.sql.zst");
    await Bun.write(zst, Bun.zstdCompressSync(await readFile(plain)));
    for (const file of [plain, gz, zst, custom]) {
      await db.sql`delete from story_beats where position = 0`;
      const r = await shinkei(
        [
          "backup",
          "--restore",
          "--allow-superuser",
          "--backup-file",
          file,
          "--yes",
          "--confirm-database",
          db.name,
          "--no-safety-backup",
        ],
        env,
      );
      expect(r.stderr).toContain("has no manifest");
      expect(r).toSucceed();
      expect(await snapshot(db.sql)).toEqual(before);
    }
  });

  test("an older shinkei's gzip backup (.sql.gz, its manifest saying so): listed, verified, restored", async () => {
    const before = await snapshot(db.sql);
    const file = await takeBackup();
    const old = file.replace(/\.sql\.zst$/, ".sql.gz").replace(/_(\d{6})\./, "_$1_9.");
    const gz = Bun.gzipSync(new Uint8Array(Bun.zstdDecompressSync(new Uint8Array(await readFile(file)))));
    await Bun.write(old, gz);
    const manifest = JSON.parse(await readFile(`${file}.manifest.json`, "utf8"));
    Object.assign(manifest, {
      file: basename(old),
      format: "plain+gzip",
      sizeBytes: gz.length,
      sha256: new Bun.CryptoHasher("sha256").update(gz).digest("hex"),
    });
    await writeFile(`${old}.manifest.json`, JSON.stringify(manifest));
    const list = await shinkei(["backup", "list", "--verify"], env);
    expect(list).toSucceed();
    expect(list.stdout).toContain(basename(old));
    const verified = await shinkei(["backup", "verify", old], env);
    expect(verified).toSucceed();
    expect(verified.stdout).toContain("plain+gzip");
    await db.sql`delete from story_beats where position = 0`;
    const r = await shinkei(
      [
        "backup",
        "--restore",
        "--allow-superuser",
        "--backup-file",
        old,
        "--yes",
        "--confirm-database",
        db.name,
        "--no-safety-backup",
      ],
      env,
    );
    expect(r).toSucceed();
    expect(r.stdout).toContain("counts match the manifest");
    expect(await snapshot(db.sql)).toEqual(before);
    await rm(old);
    await rm(`${old}.manifest.json`);
  });

  test("a truncated file and a file with one flipped byte are refused before the database is touched", async () => {
    const file = await takeBackup();
    await db.sql`insert into worlds (owner_id, name) select id, 'after' from users limit 1`;
    const before = await snapshot(db.sql);
    const bytes = await readFile(file);
    const flipped = Buffer.from(bytes);
    flipped[Math.floor(flipped.length / 2)]! ^= 0xff;
    await writeFile(file, flipped);
    let r = await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the SHA-256 does not match the manifest");
    expect(await snapshot(db.sql)).toEqual(before);

    await writeFile(file, bytes);
    await truncate(file, Math.floor(bytes.length * 0.6));
    r = await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/size is \d+ bytes, the manifest says \d+/);
    // Without a manifest the archive itself is read to its end.
    await rm(`${file}.manifest.json`);
    r = await shinkei(["backup", "verify", file], env);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("the file is damaged");
    expect(await snapshot(db.sql)).toEqual(before);
    expect((await readdir(dir)).filter((n) => n.includes("pre-restore"))).toEqual([]);
    await db.sql`delete from worlds where name = 'after'`;
  });

  test("without a safety backup the read that loads a file is the one hashed: altered, it runs nothing", async () => {
    const file = await takeBackup();
    await db.sql`insert into worlds (owner_id, name) select id, 'after' from users limit 1`;
    const before = await snapshot(db.sql);
    const bytes = await readFile(file);
    const sql = new TextDecoder().decode(Bun.zstdDecompressSync(new Uint8Array(bytes)));
    const at = sql.lastIndexOf("--\n-- PostgreSQL database dump complete");
    // A statement the judge accepts, in a well-formed zstd file: only the checksum can refuse it.
    const planted = Bun.zstdCompressSync(
      new TextEncoder().encode(`${sql.slice(0, at)}CREATE TABLE public.planted (x int);\n${sql.slice(at)}`),
    );
    const flipped = Buffer.from(bytes);
    flipped[Math.floor(flipped.length / 2)]! ^= 0xff;
    const args = [
      "backup",
      "--restore",
      "--allow-superuser",
      "--yes",
      "--confirm-database",
      db.name,
      "--no-safety-backup",
    ];
    for (const [altered, message] of [
      [planted, /size is \d+ bytes, the manifest says \d+|the SHA-256 does not match the manifest/],
      [flipped, /the SHA-256 does not match the manifest/],
      [bytes.subarray(0, Math.floor(bytes.length * 0.6)), /size is \d+ bytes, the manifest says \d+/],
    ] as const) {
      await writeFile(file, altered);
      const r = await shinkei(args, env);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(await snapshot(db.sql)).toEqual(before);
      const [row] = await db.sql`select to_regclass('public.planted') as t`;
      expect(row!.t).toBeNull();
    }
    await writeFile(file, bytes);
    expect(await shinkei(args, env)).toSucceed();
  });

  test("a restore that fails midway leaves the database exactly as before", async () => {
    const plain = join(dir, "broken.sql");
    await dump(plain);
    const text = await readFile(plain, "utf8");
    await writeFile(
      plain,
      text.replace(
        "-- PostgreSQL database dump complete",
        "INSERT INTO no_such_table VALUES (1);\n\n-- PostgreSQL database dump complete",
      ),
    );
    await db.sql`insert into worlds (owner_id, name) select id, 'only here' from users limit 1`;
    const before = await snapshot(db.sql);
    const r = await shinkei(
      ["backup", "--restore", "--allow-superuser", "--backup-file", plain, "--yes", "--confirm-database", db.name],
      env,
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("rolled back");
    expect(r.stderr).toContain("no_such_table");
    expect(await snapshot(db.sql)).toEqual(before);
    await db.sql`delete from worlds where name = 'only here'`;
  });

  test("verify: good file passes, unknown file is a clear error; the default is this database's newest", async () => {
    const path = await takeBackup();
    const ours = basename(path);
    // A newer backup of another database in the same folder, damaged: the default does not pick it.
    const other = join(dir, backupName(new Date(Date.now() + 60_000)));
    await writeFile(other, "not a backup");
    const manifest = JSON.parse(await readFile(`${path}.manifest.json`, "utf8"));
    await writeFile(
      `${other}.manifest.json`,
      JSON.stringify({ ...manifest, file: basename(other), database: "another_app" }),
    );
    const ok = await shinkei(["backup", "verify"], env);
    expect(ok).toSucceed();
    expect(ok.stdout).toMatch(/^✔ shinkei_backup_\d{8}_\d{6}\.sql\.zst: ok \([^)]*plain\+zstd/);
    expect(ok.stdout).toContain(ours);
    await rm(other);
    await rm(`${other}.manifest.json`);
    const missing = await shinkei(["backup", "verify", "nope.dump"], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("no backup file nope.dump");
  });
});

describe("faults", () => {
  test("pg_dump older than the server: a clear error naming both versions, and no file", async () => {
    const fake = await wrapTool(
      "pg_dump",
      `[ "$1" = "--version" ] && { echo "pg_dump (PostgreSQL) 12.9"; exit 0; }\nexec "$REAL" "$@"`,
    );
    const r = await shinkei(["backup"], { ...env, PATH: pathWith(fake) });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^✖ pg_dump 12 is older than the PostgreSQL \d+ server; it cannot dump it/);
    expect(await readdir(dir)).toEqual([]);
  });

  test("a pg_dump that fails after writing, or writes nothing, is an error and leaves no file", async () => {
    const failing = await wrapTool(
      "pg_dump",
      `[ "$1" = "--version" ] && exec "$REAL" --version\n"$REAL" "$@"; echo "pg_dump: error: simulated ` +
        `failure" >&2; exit 1`,
    );
    let r = await shinkei(["backup"], { ...env, PATH: pathWith(failing) });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("pg_dump failed (exit 1): pg_dump: error: simulated failure");
    expect(await readdir(dir)).toEqual([]);
    const silent = await wrapTool("pg_dump", `[ "$1" = "--version" ] && exec "$REAL" --version\nexit 0`);
    r = await shinkei(["backup"], { ...env, PATH: pathWith(silent) });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("pg_dump produced no output");
    expect(await readdir(dir)).toEqual([]);
  });

  test("a backup killed with SIGKILL midway leaves nothing that counts as a backup", async () => {
    // After its dump the wrapper waits while shinkei lives: killed, it takes the wrapper with it.
    const slow = await wrapTool(
      "pg_dump",
      `[ "$1" = "--version" ] && exec "$REAL" --version\n"$REAL" "$@"\n` +
        "while kill -0 $PPID 2>/dev/null; do sleep 0.1; done",
    );
    const p = await Service.start(["backup"], { ...env, PATH: pathWith(slow) });
    for (let i = 0; i < 100 && !(await readdir(dir)).some((n) => n.endsWith(".partial")); i++) await Bun.sleep(50);
    expect((await readdir(dir)).some((n) => n.endsWith(".partial"))).toBe(true);
    await p.stop("SIGKILL");
    expect(await listJson()).toEqual([]);
    expect(await backups()).toEqual([]);
    const v = await shinkei(["backup", "verify"], env);
    expect(v.stderr).toContain("no backups in");
  });

  test("a second backup while one runs: a clear error; with --wait it runs after", async () => {
    // The first backup's pg_dump finishes only once the gate file exists: it holds the lock until
    // the second has been refused and the third queues behind it, however slow the machine.
    const gate = join(await tempDir("backup-gate"), "open");
    const slow = await wrapTool(
      "pg_dump",
      `[ "$1" = "--version" ] && exec "$REAL" --version\n"$REAL" "$@"\nwhile [ ! -e '${gate}' ]; do sleep 0.05; done`,
    );
    const first = await Service.start(["backup"], { ...env, PATH: pathWith(slow) });
    try {
      for (let i = 0; i < 100 && !(await readdir(dir)).some((n) => n.endsWith(".partial")); i++) await Bun.sleep(50);
      const second = await shinkei(["backup"], env);
      expect(second.code).toBe(75);
      expect(second.stderr).toContain(
        `another backup is running on this database (held by "shinkei backup (pid ${first.proc.pid})"`,
      );
      const waited = shinkei(["backup", "--wait"], env);
      await until(
        "the --wait backup to queue on the lock",
        async () =>
          (
            await db.sql`select 1 from pg_stat_activity where application_name like 'shinkei backup (pid %'
              and application_name <> ${`shinkei backup (pid ${first.proc.pid})`} and wait_event = 'advisory'`
          ).length > 0,
      );
      await writeFile(gate, "");
      expect(await waited).toSucceed();
    } finally {
      await writeFile(gate, "");
    }
    expect(await first.proc.exited).toBe(0);
    expect((await backups()).length).toBe(2);
  });

  const asRoot = process.getuid?.() === 0;
  test.skipIf(!asRoot)("a full disk mid-backup is an error, and no partial file is left", async () => {
    const full = await tempDir("full");
    if (Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", full]).exitCode !== 0)
      throw new Error("mount failed");
    const [story] = await db.sql`select id from stories limit 1`;
    await db.sql`insert into story_beats (story_id, position, content)
      select ${story!.id}, 1000 + i, md5(random()::text) || md5(random()::text) from generate_series(1, 2000) i`;
    try {
      const r = await shinkei(["backup"], { ...env, BACKUP_DIR: full });
      expect(r.code).toBe(1);
      expect(r.stderr.split("\n")[0]).toBe("✖ writing the backup failed: the disk is full");
      expect(await readdir(full)).toEqual([]);
    } finally {
      Bun.spawnSync(["umount", full]);
      await db.sql`delete from story_beats where position >= 1000`;
    }
  });

  test("an unwritable backup folder is a clear error", async () => {
    const file = join(dir, "not-a-dir");
    await writeFile(file, "x");
    const r = await shinkei(["backup"], { ...env, BACKUP_DIR: join(file, "sub") });
    expect(r.code).toBe(1);
    expect(r.stderr.split("\n")[0]).toBe(`✖ cannot use the backup folder ${join(file, "sub")}: ENOTDIR`);
    expect(r.stderr).not.toContain("    at ");
  });
});
