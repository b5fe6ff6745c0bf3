import { expect, test } from "bun:test";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import postgres from "postgres";
import { obtainBackup, serverOf } from "../src/backup/catalog.ts";
import { checkFreshness, newestGood } from "../src/backup/freshness.ts";
import { pruneStore } from "../src/backup/prune.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { connect, describeTarget } from "../src/pg/db.ts";
import { LocalStore } from "../src/storage/local.ts";
import { backupName } from "../src/storage/naming.ts";
import { shinkei, takeBackup } from "./support/cli.ts";
import { startCluster } from "./support/cluster.ts";
import { dropDatabase, serverUrl, snapshot, urlFor } from "./support/db.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";

/*
 * What `backup restore` and `recover --from latest` pick when no file is named, with a second
 * folder standing in for the off-site store (the store contract suite runs the same tests against
 * S3: what obtainBackup does with a store is the interface's, not the backend's).
 */

const hour = 3600_000;
/** The server every planted backup was taken on: `on(name)` is a database there, as a default looks for it. */
const on = (database: string) => ({ database, host: "127.0.0.1", port: 5432 });

/** A backup file and its manifest in `dir`, taken `hoursAgo` hours ago, of `database`, for `reason`. */
async function plant(dir: string, hoursAgo: number, database: unknown, reason = "manual", content = "local") {
  const name = backupName(new Date(Date.now() - hoursAgo * hour));
  await writeFile(join(dir, name), content);
  await writeFile(
    join(dir, `${name}.manifest.json`),
    JSON.stringify({ file: name, reason, database, host: "127.0.0.1", port: 5432 }),
  );
  return name;
}

test("the newest backup of the database named, not a newer one of another database", async () => {
  const dir = await tempDir("catalog");
  const a = await plant(dir, 2, "a");
  const b = await plant(dir, 1, "b");
  expect(await obtainBackup(dir, undefined, undefined, on("a"))).toBe(join(dir, a));
  // Without a database, the newest of any.
  expect(await obtainBackup(dir)).toBe(join(dir, b));
});

test("only another database's backups: refused, naming both as quoted text", async () => {
  const dir = await tempDir("catalog");
  await plant(dir, 1, "b\n\u001b[31mred");
  const e = await obtainBackup(dir, undefined, undefined, on("a")).catch((x) => x);
  expect(e.code).toBe("BACKUP_NOT_FOUND");
  expect(e.message).toBe(`no backups of "a" in ${dir} (the newest is of "b\\n\\u001b[31mred")`);
  expect(e.hint).toContain("--backup-file");
  // A manifest whose database is not text prints as text.
  const odd = await tempDir("catalog");
  await plant(odd, 1, { name: "b" });
  expect((await obtainBackup(odd, undefined, undefined, on("a")).catch((x) => x)).message).toContain(
    '(the newest is of "[object Object]")',
  );
});

/** A database called `name` on `server`, migrated and holding seedSample's rows tagged `tag`. */
async function databaseNamed(server: string, name: string, tag: string) {
  const admin = postgres(server, { max: 1, onnotice: () => {} });
  await admin`create database ${admin(name)}`.finally(() => admin.end());
  const url = urlFor(name, server);
  const sql = connect(url, { max: 2 });
  await migrate(sql);
  await seedSample(sql, tag);
  return { url, sql, drop: () => sql.end({ timeout: 1 }).then(() => dropDatabase(name, server)) };
}

test("staging and production databases of one name, one folder: a default never picks the other server's", async () => {
  // Production on the shared server, staging on a server of its own: one database name, one BACKUP_DIR.
  const staging = await startCluster();
  const name = `shinkei_test_same_name_${crypto.randomUUID().slice(0, 8)}`;
  const production = await databaseNamed(serverUrl, name, "production");
  const stage = await databaseNamed(staging.url(), name, "staging");
  const dir = await tempDir("catalog-two-servers");
  const prodEnv = { DATABASE_URL: production.url, BACKUP_DIR: dir };
  const stageEnv = { DATABASE_URL: stage.url, BACKUP_DIR: dir };
  const server = (url: string) => `"${serverOf(describeTarget(url))}"`;
  const restore = ["backup", "restore", "--allow-superuser", "--yes", "--confirm-database", name];
  try {
    const prodBackup = await takeBackup(prodEnv);
    const before = await snapshot(stage.sql);
    // Only production's backups of that name: staging's restore is refused, naming it, and changes nothing.
    const refused = await shinkei(restore, stageEnv);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(
      `no backups of "${name}" on ${server(stage.url)} in ${dir}; the newest of that name is ` +
        `${basename(prodBackup)}, taken on ${server(production.url)}: pass the file explicitly`,
    );
    expect(refused.stderr).toContain(`name ${basename(prodBackup)} as the file (--backup-file) to use it`);
    expect(await snapshot(stage.sql)).toEqual(before);
    expect((await readdir(dir)).filter((n) => n.includes("pre-restore"))).toEqual([]);

    // Staging's own backup, then a newer one of production: staging's default is its own.
    const own = await takeBackup(stageEnv);
    await takeBackup(prodEnv);
    await stage.sql`update story_beats set content = 'changed'`;
    const restored = await shinkei(restore, stageEnv);
    expect(restored).toSucceed();
    expect(restored.stdout).toContain(`restored       ${basename(own)}`);
    expect(await snapshot(stage.sql)).toEqual(before);
    // verify's default picks the same way.
    const verified = await shinkei(["backup", "verify"], stageEnv);
    expect(verified).toSucceed();
    expect(verified.stdout).toContain(`✔ ${basename(own)}: ok`);
  } finally {
    await stage.drop();
    await production.drop();
    await staging.stop();
  }
}, 120_000);

test("off-site: the newest copy of this database is downloaded, not the newer one of another", async () => {
  const dir = await tempDir("catalog");
  const bucket = await tempDir("catalog-bucket");
  const mine = await plant(bucket, 2, "a", "manual", "remote a");
  await plant(bucket, 1, "b", "manual", "remote b");
  const path = await obtainBackup(dir, undefined, new LocalStore(bucket), on("a"));
  expect(path).toBe(join(dir, mine));
  expect(await readFile(path, "utf8")).toBe("remote a");
  // Only what was picked came down: b's file and manifest stayed in the bucket.
  expect((await readdir(dir)).sort()).toEqual([mine, `${mine}.manifest.json`]);
});

test("off-site: a file already here is never downloaded over, and a safety copy is never picked", async () => {
  const dir = await tempDir("catalog");
  const bucket = await tempDir("catalog-bucket");
  const a = await plant(dir, 3, "a");
  const b = await plant(dir, 2, "b", "manual", "local b");
  // The bucket's copy of b differs (tampered, or another of the same name): it must not replace ours.
  await writeFile(join(bucket, b), "tampered b");
  await writeFile(join(bucket, `${b}.manifest.json`), JSON.stringify({ file: b, reason: "manual", ...on("a") }));
  await plant(bucket, 1, "a", "pre-restore", "safety copy of a");
  expect(await obtainBackup(dir, undefined, new LocalStore(bucket), on("a"))).toBe(join(dir, a));
  expect(await readFile(join(dir, b), "utf8")).toBe("local b");
  expect((await readdir(dir)).length).toBe(4);
});

test("freshness is judged per database: another's fresh backups do not stand in for this one's", async () => {
  const dir = await tempDir("catalog");
  const old = await plant(dir, 30, "a");
  await plant(dir, 1, "b");
  // sizeBytes as the manifest says, so both count as good.
  for (const name of await readdir(dir))
    if (name.endsWith(".manifest.json")) {
      const m = JSON.parse(await readFile(join(dir, name), "utf8"));
      await writeFile(join(dir, name), JSON.stringify({ ...m, sizeBytes: "local".length }));
    }
  expect((await newestGood(dir, on("a"))).newest?.name).toBe(old);
  expect((await newestGood(dir, on("c"))).newest).toBeNull();
  // A database of the same name on another server (staging beside production) is another database;
  // another spelling of the same server is the same one.
  expect((await newestGood(dir, { ...on("a"), port: 5433 })).newest).toBeNull();
  expect((await newestGood(dir, { ...on("a"), host: "LocalHost" })).newest?.name).toBe(old);
  expect((await newestGood(dir, { ...on("a"), host: "[::1]" })).newest?.name).toBe(old);
  expect((await newestGood(dir, { ...on("a"), host: "db.internal" })).newest).toBeNull();
  // Other loopback addresses may be other servers (containers published on 127.0.0.2, 127.0.0.3).
  expect((await newestGood(dir, { ...on("a"), host: "127.0.0.2" })).newest).toBeNull();
  const stale = await checkFreshness(dir, 2 * hour, 24 * hour, undefined, on("a")).catch((e) => e);
  expect(stale.code).toBe("BACKUP_STALE");
  expect(stale.message).toContain(`the newest good backup (${old}) is 1d 6h old`);
  const none = await checkFreshness(dir, 2 * hour, 24 * hour, undefined, on("c")).catch((e) => e);
  expect(none.message).toBe(`no good backup of "c" on localhost:5432 in ${dir}`);
});

test("off-site retention decides only on this database's backups, by manifest: another's are left alone", async () => {
  const dir = await tempDir("catalog");
  const day = 24 * hour;
  const ours: string[] = [];
  for (const d of [30, 20, 12]) ours.push(await plant(dir, (d * day) / hour, "a"));
  const theirs: string[] = [];
  for (const d of [29.9, 19.9, 11.9, 5]) theirs.push(await plant(dir, (d * day) / hour, "b\n\u001b[31m"));
  const policy = { keepDays: 30, keepDaily: 2, keepWeekly: 0, keepMonthly: 0 };
  const r = await pruneStore(new LocalStore(dir), 3, policy, true, on("a"));
  // Counted together, the other database's later backups took both daily places.
  expect(ours.map((name) => r.decisions.find((d) => d.name === name)!.keep)).toEqual([false, true, true]);
  // The other database's copies are its own service's to prune (with its own S3_KEEP_DAYS).
  expect(r.decisions.filter((d) => theirs.includes(d.name))).toEqual([]);
  expect(r.leftAlone).toEqual({ others: 4, groups: 1, unowned: 0, unsigned: 0 });
  expect(r.removed).toEqual([]);
  expect((await readdir(dir)).length).toBe(14);
});
