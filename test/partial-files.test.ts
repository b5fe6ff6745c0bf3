import { afterAll, beforeAll, expect, test } from "bun:test";
import { lstat, readFile, readdir, symlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../src/storage/files.ts";
import { LocalStore } from "../src/storage/local.ts";
import { S3Store } from "../src/storage/s3.ts";
import { backupName } from "../src/storage/naming.ts";
import type { TestDatabase } from "./support/db.ts";
import { seededDatabase } from "./support/backup.ts";
import { shinkei, takeBackup } from "./support/cli.ts";
import { connect } from "../src/pg/db.ts";
import { until } from "./support/wait.ts";
import { tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";

// Whoever can write to a backup folder may plant a symbolic link where shinkei is about to write
// a `.partial` file; following it would overwrite the link's target with shinkei's privileges.
let s3: TestS3;
let db: TestDatabase;
beforeAll(async () => {
  s3 = await TestS3.start();
  db = await seededDatabase("partial");
});
afterAll(async () => {
  await s3.stop();
  await db.drop();
});

test("writeFileAtomic: writers of one file at once each finish, and the file is one of theirs, whole", async () => {
  // A base backup's manifest: its check and the off-site copier each write it.
  const path = join(await tempDir("partial-concurrent"), "shinkei_base.manifest.json");
  const bodies = Array.from({ length: 20 }, (_, i) => JSON.stringify({ writer: i, pad: "x".repeat(64 * 1024) }));
  const results = await Promise.allSettled(bodies.map((b) => writeFileAtomic(path, b)));
  expect(results.filter((r) => r.status === "rejected")).toEqual([]);
  expect(bodies).toContain(await readFile(path, "utf8"));
  expect(await Bun.file(`${path}.partial`).exists()).toBe(false);
});

async function victim(): Promise<{ path: string; unchanged(): Promise<boolean> }> {
  const path = join(await tempDir("victim"), "precious.conf");
  await writeFile(path, "precious\n");
  return { path, unchanged: async () => (await readFile(path, "utf8")) === "precious\n" };
}

test("writeFileAtomic (manifests, drill results) refuses a symbolic link at the .partial path", async () => {
  const dir = await tempDir("partial-atomic");
  const v = await victim();
  await symlink(v.path, join(dir, "result.json.partial"));
  await expect(writeFileAtomic(join(dir, "result.json"), "{}")).rejects.toMatchObject({
    code: "UNSAFE_PATH",
    message: expect.stringContaining("refusing to write through it"),
  });
  expect(await v.unchanged()).toBe(true);
  // A plain leftover of a crashed write (no longer written to) is no threat: it is replaced.
  await writeFile(join(dir, "other.json.partial"), "half");
  const crashed = new Date(Date.now() - 60_000);
  await utimes(join(dir, "other.json.partial"), crashed, crashed);
  await writeFileAtomic(join(dir, "other.json"), "{}");
  expect(await readFile(join(dir, "other.json"), "utf8")).toBe("{}");
});

test("copies into a folder and downloads from S3 do not write through a planted link", async () => {
  const name = backupName(new Date(Date.UTC(2026, 0, 2, 3, 4, 5)));
  const source = join(await tempDir("partial-src"), name);
  await writeFile(source, "backup bytes");
  const copies = await tempDir("partial-copies");
  const v = await victim();

  await symlink(v.path, join(copies, `${name}.partial`));
  await expect(new LocalStore(copies).put(name, source)).rejects.toMatchObject({ code: "UNSAFE_PATH" });

  const download = join(await tempDir("partial-download"), name);
  await symlink(v.path, `${download}.partial`);
  await expect(new LocalStore(join(source, "..")).get(name, download)).rejects.toMatchObject({ code: "UNSAFE_PATH" });

  const store = new S3Store(s3.config("partial/"));
  await store.put(name, source);
  await expect(store.get(name, download)).rejects.toMatchObject({ code: "UNSAFE_PATH" });
  expect(await v.unchanged()).toBe(true);
});

test("a backup skips a name whose .partial is a dangling link and creates nothing at its target", async () => {
  const dir = await tempDir("partial-backup");
  const target = join(await tempDir("partial-target"), "created-through-link");
  const now = Date.now();
  for (let s = -2; s <= 60; s++) await symlink(target, join(dir, `${backupName(new Date(now + s * 1000))}.partial`));
  const path = await takeBackup({ DATABASE_URL: db.url, BACKUP_DIR: dir });
  expect(path).toMatch(/_1\.sql\.zst$/);
  expect((await lstat(path)).isFile()).toBe(true);
  expect(await readdir(join(target, ".."))).toEqual([]);
});

test("two databases' backups of one second in one folder: neither writes over the other's name", async () => {
  const other = await seededDatabase("partial_other");
  const hold = connect(db.url, { max: 1 });
  try {
    const dir = await tempDir("partial-shared");
    let release = () => {};
    const released = new Promise<void>((r) => (release = r));
    let locked = () => {};
    const isLocked = new Promise<void>((r) => (locked = r));
    // The first backup stops after choosing its name, before its .partial exists (its snapshot waits on a lock).
    const holding = hold.begin(async (tx) => {
      await tx`lock table public.schema_migrations in access exclusive mode`;
      locked();
      await released;
    });
    await isLocked;
    while (Date.now() % 1000 > 100) await Bun.sleep(5); // both start early in one second
    const first = shinkei(["backup"], { DATABASE_URL: db.url, BACKUP_DIR: dir });
    await until(
      "the first backup to wait on the lock",
      async () =>
        (await other.sql`select 1 from pg_stat_activity where datname = ${db.name} and wait_event_type = 'Lock'`)
          .length > 0,
      20_000,
    );
    const second = await shinkei(["backup"], { DATABASE_URL: other.url, BACKUP_DIR: dir });
    expect(second).toSucceed();
    release();
    await holding;
    const firstResult = await first;
    expect(firstResult).toSucceed();
    const secondPath = second.stdout.match(/^backup\s+(\S+)$/m)![1]!;
    const manifest = JSON.parse(await readFile(`${secondPath}.manifest.json`, "utf8"));
    expect(manifest.database).toBe(other.name);
    const verify = await shinkei(["backup", "verify", "--all"], { DATABASE_URL: other.url, BACKUP_DIR: dir });
    expect(verify).toSucceed();
  } finally {
    await hold.end();
    await other.drop();
  }
});
