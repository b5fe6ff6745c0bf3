import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import { snapshot, type TestDatabase } from "./support/db.ts";
import { shinkei } from "./support/cli.ts";
import { backupFolder, seededDatabase } from "./support/backup.ts";
import { TestS3 } from "./support/s3.ts";
import { tempDir } from "./support/fixtures.ts";
import { readSnapshot } from "../src/metrics/snapshot.ts";
import { loadConfig } from "../src/config/index.ts";
import { scheduledRun } from "../src/service/schedule.ts";
import { S3Store } from "../src/storage/s3.ts";
import { backupName } from "../src/storage/naming.ts";
import { pruneStore } from "../src/backup/prune.ts";
import { mirrorMissing } from "../src/backup/offsite.ts";
import { describeTarget } from "../src/pg/db.ts";

let db: TestDatabase;
let s3: TestS3;
let dir: string;
let env: Record<string, string>;

beforeAll(async () => {
  db = await seededDatabase("offsite", "o");
  s3 = await TestS3.start();
});
beforeEach(async () => {
  ({ dir, env } = await backupFolder(db, "offsite", s3.env(`run-${crypto.randomUUID().slice(0, 6)}/`)));
});
afterAll(async () => {
  await s3.stop();
  await db.drop();
});

async function keys(prefix: string): Promise<string[]> {
  const r = await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }));
  return (r.Contents ?? []).map((o) => o.Key!).sort();
}

describe("off-site copies", () => {
  test("a backup is uploaded with its manifest under the prefix, listed as local+s3, restores from S3", async () => {
    const before = await snapshot(db.sql);
    const r = await shinkei(["backup"], env);
    expect(r).toSucceed();
    expect(r.stdout).toContain(`off-site   copied to s3://${s3.bucket}/${env.S3_PREFIX}`);
    const name = r.stdout.match(/^backup\s+\S+\/(shinkei_backup_\S+)$/m)![1]!;
    expect(await keys(env.S3_PREFIX!)).toEqual([`${env.S3_PREFIX}${name}`, `${env.S3_PREFIX}${name}.manifest.json`]);
    const remoteManifest = JSON.parse(
      await (
        await s3
          .client()
          .send(new GetObjectCommand({ Bucket: s3.bucket, Key: `${env.S3_PREFIX}${name}.manifest.json` }))
      ).Body!.transformToString(),
    );
    expect(remoteManifest.offsite.s3).toMatchObject({ verified: "etag" });

    let list = JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
    expect(list.map((b: { name: string; location: string }) => [b.name, b.location])).toEqual([[name, "local+s3"]]);

    // The machine loses its disk: only the S3 copy is left.
    await rm(dir, { recursive: true });
    list = JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
    expect(list.map((b: { name: string; location: string }) => [b.name, b.location])).toEqual([[name, "s3"]]);
    await db.sql`delete from story_beats`;
    const restored = await shinkei(
      ["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(restored).toSucceed();
    expect(restored.stdout).toContain(`restored       ${name}`);
    expect(restored.stdout).toContain("counts match the manifest");
    expect(await snapshot(db.sql)).toEqual(before);
  });

  test("a file larger than one part goes up as a multipart upload and is checked", async () => {
    const store = new S3Store(s3.config(env.S3_PREFIX!));
    const path = join(dir, "shinkei_backup_20240101_000000.dump.gz");
    const bytes = crypto.getRandomValues(new Uint8Array(20 * 1024 * 1024));
    // A zero every 64 KiB, set in place: a map() with a callback per byte cost 250 ms of CPU.
    for (let i = 0; i < bytes.length; i += 65536) bytes[i] = 0;
    await writeFile(path, bytes);
    const copy = await store.put("shinkei_backup_20240101_000000.dump.gz", path);
    expect(copy.sizeBytes).toBe(20 * 1024 * 1024);
    expect(copy.verified).toBe("etag");
    const back = join(dir, "downloaded");
    await store.get("shinkei_backup_20240101_000000.dump.gz", back);
    expect(Bun.hash(await Bun.file(back).bytes())).toBe(Bun.hash(await Bun.file(path).bytes()));
  });

  test("S3 down during a run: the local backup is kept and the failure reported; the next run copies it", async () => {
    const config = loadConfig({ ...env });
    const logs: Record<string, unknown>[] = [];
    const log = (e: Record<string, unknown>) => logs.push(e);
    const store = new S3Store(config.s3!);
    await s3.stop();
    try {
      await scheduledRun({ sql: db.sql, config, log, store }, new Date(Date.UTC(2030, 0, 1, 2, 0, 0)));
    } finally {
      await s3.start();
    }
    const first = logs.find((l) => l.msg === "off-site copy")!;
    expect(first.offsite).toBe("failed");
    expect(logs.some((l) => l.msg === "backup finished")).toBe(true);
    const local = (await readdir(dir)).filter((n) => n.endsWith(".sql.zst"));
    expect(local).toHaveLength(1);
    expect(await keys(env.S3_PREFIX!)).toEqual([]);
    const list = JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
    expect(list.map((b: { location: string; check: string }) => [b.location, b.check])).toEqual([["local", "ok"]]);

    logs.length = 0;
    await scheduledRun({ sql: db.sql, config, log, store }, new Date(Date.UTC(2030, 0, 1, 2, 0, 1)));
    const second = logs.find((l) => l.msg === "off-site copy")!;
    expect(second.offsite).toBe("ok");
    expect((second.copied as string[]).sort()).toEqual(
      (await readdir(dir)).filter((n) => n.endsWith(".sql.zst")).sort(),
    );
    expect((await keys(env.S3_PREFIX!)).length).toBe(4);

    // Off-site retention removing a copy must not make the next run upload it again.
    const store2 = new S3Store(config.s3!);
    await store2.remove(local[0]!);
    logs.length = 0;
    await scheduledRun({ sql: db.sql, config, log, store }, new Date(Date.UTC(2030, 0, 1, 2, 0, 2)));
    const third = logs.find((l) => l.msg === "off-site copy")!;
    expect(third.copied).toHaveLength(1); // only the new backup of this run
    expect(third.copied).not.toContain(local[0]);
  });

  test("one prefix, two databases, backups of one second: the second is not written over the first", async () => {
    const r = await shinkei(["backup"], env);
    expect(r).toSucceed();
    const name = r.stdout.match(/^backup\s+\S+\/(shinkei_backup_\S+)$/m)![1]!;
    const first = JSON.parse(await readFile(join(dir, `${name}.manifest.json`), "utf8"));
    // Another database's service, its own folder, the same prefix, a backup named for the same second.
    const other = await tempDir("offsite-other");
    const content = "-- another database's dump\n";
    await writeFile(join(other, name), content);
    const sha256 = new Bun.CryptoHasher("sha256").update(content).digest("hex");
    const { offsite: _, ...rest } = first;
    await writeFile(
      join(other, `${name}.manifest.json`),
      JSON.stringify({ ...rest, database: "another_app", sha256, sizeBytes: content.length }),
    );
    const store = new S3Store(s3.config(env.S3_PREFIX!));
    const report = await mirrorMissing(store, other, { ...describeTarget(db.url), database: "another_app" });
    expect(report.copied).toEqual([]);
    expect(report.failed.map((f) => f.name)).toEqual([name]);
    expect(report.failed[0]!.error).toContain(`/${name} is another backup (of ${JSON.stringify(db.name)} on`);
    // The first database's copy is as it was: its bytes and its manifest.
    const object = await s3.client().send(new GetObjectCommand({ Bucket: s3.bucket, Key: `${env.S3_PREFIX}${name}` }));
    const bytes = await object.Body!.transformToByteArray();
    expect(new Bun.CryptoHasher("sha256").update(bytes).digest("hex")).toBe(first.sha256);
    const manifest = await s3
      .client()
      .send(new GetObjectCommand({ Bucket: s3.bucket, Key: `${env.S3_PREFIX}${name}.manifest.json` }));
    expect(JSON.parse(await manifest.Body!.transformToString()).database).toBe(db.name);
  });

  test("one folder, two databases, each its own prefix: a service copies only its own database's backups", async () => {
    const r = await shinkei(["backup"], env);
    expect(r).toSucceed();
    const mine = r.stdout.match(/^backup\s+\S+\/(shinkei_backup_\S+)$/m)![1]!;
    // The other database's service backs up into the same folder and copies to a prefix of its own.
    const theirs = backupName(new Date(Date.now() - 3600_000));
    const m = JSON.parse(await readFile(join(dir, `${mine}.manifest.json`), "utf8"));
    await writeFile(join(dir, theirs), await readFile(join(dir, mine)));
    const { offsite: _, ...rest } = m;
    await writeFile(
      join(dir, `${theirs}.manifest.json`),
      JSON.stringify({ ...rest, file: theirs, database: "another_app" }),
    );
    const elsewhere = new S3Store(s3.config(`mine-${crypto.randomUUID().slice(0, 6)}/`));
    const report = await mirrorMissing(elsewhere, dir, describeTarget(db.url));
    expect(report).toEqual({ copied: [mine], failed: [] });
    const again = await mirrorMissing(elsewhere, dir, describeTarget(db.url));
    expect(again).toEqual({ copied: [], failed: [] });
    // Their manifest is untouched: no copy of ours recorded in it.
    expect(JSON.parse(await readFile(join(dir, `${theirs}.manifest.json`), "utf8")).offsite).toBeUndefined();
    // Nor are theirs pending here: the metrics and the status page count this database's alone.
    expect((await readSnapshot(dir, elsewhere, { owner: describeTarget(db.url) })).offsitePending).toBe(0);
  });

  test("S3_PREFIX changed between runs: the backups only the old prefix holds are copied to the new one", async () => {
    const logs: Record<string, unknown>[] = [];
    const log = (e: Record<string, unknown>) => logs.push(e);
    const old = loadConfig({ ...env });
    await scheduledRun({ sql: db.sql, config: old, log, store: new S3Store(old.s3!) }, new Date(Date.UTC(2030, 0, 2)));
    const [first] = (await readdir(dir)).filter((n) => n.endsWith(".sql.zst"));
    expect(await keys(env.S3_PREFIX!)).toEqual([first!, `${first}.manifest.json`].map((n) => env.S3_PREFIX + n));

    // The operator moves the copies to a new prefix (a new bucket alike) and restarts the service.
    const moved = { ...env, S3_PREFIX: `moved-${crypto.randomUUID().slice(0, 6)}/` };
    const config = loadConfig(moved);
    logs.length = 0;
    await scheduledRun({ sql: db.sql, config, log, store: new S3Store(config.s3!) }, new Date(Date.UTC(2030, 0, 3)));
    const copy = logs.find((l) => l.msg === "off-site copy")!;
    expect(copy.offsite).toBe("ok");
    expect(copy.copied).toContain(first);
    expect(await keys(moved.S3_PREFIX)).toContain(moved.S3_PREFIX + first);
    const list = JSON.parse((await shinkei(["backup", "--list", "--json"], moved)).stdout);
    expect(list.map((b: { location: string }) => b.location)).toEqual(["local+s3", "local+s3"]);
  });

  test("off-site retention deletes only old keys of ours under our prefix, never the newest", async () => {
    const prefix = env.S3_PREFIX!;
    const put = (Key: string) => s3.client().send(new PutObjectCommand({ Bucket: s3.bucket, Key, Body: "x" }));
    for (const name of ["shinkei_backup_20200101_020000.dump.gz", "shinkei_backup_20200102_020000.dump.gz"]) {
      await put(prefix + name);
      await put(`${prefix}${name}.manifest.json`);
    }
    await put(`${prefix}shinkei_backup_20200101_020000.dump.gz.bak`); // not ours by name
    await put(`${prefix}notes.txt`);
    await put(`${prefix}nested/shinkei_backup_20200101_020000.dump.gz`); // another folder
    await put("elsewhere/shinkei_backup_20200101_020000.dump.gz"); // outside the prefix
    const store = new S3Store(s3.config(prefix));
    const dry = await pruneStore(store, 30, loadConfig({}).backup, true, describeTarget(db.url));
    expect(dry.decisions.map((d) => [d.name, d.keep])).toEqual([
      ["shinkei_backup_20200102_020000.dump.gz", true],
      ["shinkei_backup_20200101_020000.dump.gz", false],
    ]);
    expect(dry.removed).toEqual([]);
    const real = await pruneStore(store, 30, loadConfig({}).backup, false, describeTarget(db.url));
    expect(real.removed).toEqual(["shinkei_backup_20200101_020000.dump.gz"]);
    expect(await keys(prefix)).toEqual([
      `${prefix}nested/shinkei_backup_20200101_020000.dump.gz`,
      `${prefix}notes.txt`,
      `${prefix}shinkei_backup_20200101_020000.dump.gz.bak`,
      `${prefix}shinkei_backup_20200102_020000.dump.gz`,
      `${prefix}shinkei_backup_20200102_020000.dump.gz.manifest.json`,
    ]);
    expect(await keys("elsewhere/")).toEqual(["elsewhere/shinkei_backup_20200101_020000.dump.gz"]);
  });
});
