import { afterAll, beforeAll, expect, test, setDefaultTimeout } from "bun:test";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { zstdDecompressSync } from "node:zlib";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { shinkei } from "./support/cli.ts";
import { TestS3 } from "./support/s3.ts";
import { until } from "./support/wait.ts";
import { receiverFlushed } from "./support/wal.ts";
import { archiveTrust } from "../src/wal/trust.ts";
import { connect, ensureDatabase, type Sql } from "../src/pg/db.ts";
import { loadConfig, type Config } from "../src/config/index.ts";
import { decrypt, writeIdentity } from "../src/storage/crypt.ts";
import { startWalStream } from "../src/wal/stream.ts";
import { serverInfo } from "../src/pg/server-info.ts";
import { pitrStatus } from "../src/wal/status.ts";
import {
  archiveWalFile,
  listArchive,
  readRecord,
  recordPath,
  signWalRecord,
  walRecordProblem,
  walRoot,
  writeRecord,
} from "../src/wal/archive.ts";
import { createBaseBackup, listBaseBackups } from "../src/wal/base.ts";
import { verifyBaseBackup } from "../src/wal/verify-base.ts";
import { mirrorWalRecord, walNaming, walStore } from "../src/wal/offsite.ts";
import { LocalStore } from "../src/storage/local.ts";
import type { BackupStore } from "../src/storage/store.ts";
import { parseLsn, segmentName, segnoOf } from "../src/wal/segments.ts";
import { Metrics } from "../src/metrics/registry.ts";
import { archiveSource } from "../src/metrics/sources.ts";

// A cluster of our own, s3rver and real pg_receivewal: seconds per step on a busy 2-core machine.
setDefaultTimeout(90_000);

let cluster: TestCluster;
let s3: TestS3;
let sql: Sql;
let segmentBytes: number;

beforeAll(async () => {
  cluster = await startCluster();
  await ensureDatabase(cluster.url("shinkei"));
  sql = connect(cluster.url("shinkei"), { max: 2 });
  await sql`create table canary (v text)`;
  segmentBytes = (await serverInfo(sql)).segmentBytes;
  s3 = await TestS3.start();
});
afterAll(async () => {
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
  await s3?.stop();
});

const objects = async (config: Config) => new Set((await walStore(config)!.list()).map((o) => o.name));

test("segments, the partial in receipt and base backups reach S3 encrypted, catch up, come back intact", async () => {
  const dir = await tempDir("wal-s3");
  const key = join(await tempDir("wal-s3-key"), "k");
  const recipient = await writeIdentity(key);
  const env = {
    DATABASE_URL: cluster.url("shinkei"),
    BACKUP_DIR: dir,
    WAL_ARCHIVE: "stream",
    BACKUP_AGE_RECIPIENTS: recipient,
    WAL_PARTIAL_UPLOAD_INTERVAL: "1s",
    ...s3.env("shinkei/"),
  };
  const config = loadConfig(env);
  const lines: Record<string, unknown>[] = [];
  const stream = await startWalStream({ sql, config, log: (l) => void lines.push(l), pollMs: 100, uploadEveryMs: 200 });
  const age = { recipients: [], identityFile: key };
  try {
    const base = await createBaseBackup({
      sql,
      url: config.databaseUrl,
      backupDir: dir,
      reason: "manual",
      fast: true,
      age: config.backup.age,
    });
    // Encrypted: checked whole with the private key; with public keys only, the hashes and a note.
    const [sealedBase] = await listBaseBackups(dir);
    expect(await verifyBaseBackup(dir, sealedBase!, { recipients: [], identityFile: key })).toMatchObject({
      ok: true,
      problems: [],
    });
    const publicOnly = await verifyBaseBackup(dir, (await listBaseBackups(dir))[0]!, config.backup.age);
    expect(publicOnly.ok).toBe(true);
    expect(publicOnly.skipped).toContain("no key");
    expect(publicOnly.pgVerifybackup).toBeNull();

    // The segment being received: copied within the interval, sealed like the rest. The row starts
    // it, so the insert position names the segment that holds it.
    await sql`select pg_switch_wal()`;
    const { lsn } = (
      await sql<
        { lsn: string }[]
      >`insert into canary values ('partial-canary-3141') returning pg_current_wal_insert_lsn()::text as lsn`
    )[0]!;
    const seg = segmentName(1, segnoOf(parseLsn(lsn), segmentBytes), segmentBytes);
    await receiverFlushed(sql, lsn);
    const store = walStore(config)!;
    const partialCopy = join(dir, "partial-copy");
    await until("the partial off-site, holding the row", async () => {
      if (!(await objects(config)).has(`${seg}.partial.zst.age`)) return false;
      await store.get(`${seg}.partial.zst.age`, partialCopy);
      const plain = Buffer.from(
        await new Response(await decrypt(Bun.file(partialCopy).stream(), age, "partial")).arrayBuffer(),
      );
      return zstdDecompressSync(plain).includes("partial-canary-3141");
    });
    expect((await readFile(partialCopy)).includes("partial-canary-3141")).toBe(false);
    // The measured off-site RPO: what S3 holds trails the local archive by less than the interval plus 5 s.
    const status = await pitrStatus(sql, config);
    expect(status.offsite?.location).toBe(`s3://${s3.bucket}/shinkei/wal/`);
    expect(status.offsite!.coveredUntil).not.toBeNull();
    expect(status.offsite!.lagSeconds).toBeGreaterThanOrEqual(0);
    expect(status.offsite!.lagSeconds).toBeLessThan(1 + 5);

    // The finished segment replaces its partial off-site; the base backup is there with both manifests.
    await sql`select pg_switch_wal()`;
    await until("the finished segment off-site", async () => {
      const o = await objects(config);
      return (
        o.has(`${seg}.zst.age`) &&
        o.has(`${seg}.json`) &&
        !o.has(`${seg}.partial.zst.age`) &&
        o.has(base.manifest.file) &&
        o.has(`${base.manifest.file}.manifest.json`) &&
        o.has(base.manifest.backupManifestFile)
      );
    });
    const record = (await listArchive(walRoot(dir))).find((r) => r.name === seg)!;
    expect(record.offsite?.s3?.location).toBe(`s3://${s3.bucket}/shinkei/wal/`);
    const back = join(dir, "back");
    await store.get(record.file, back);
    const bytes = await readFile(back);
    expect(new Bun.CryptoHasher("sha256").update(bytes).digest("hex")).toBe(record.sha256);
    expect(bytes.includes("partial-canary-3141")).toBe(false);
    await store.get(base.manifest.file, back);
    expect(new Bun.CryptoHasher("sha256").update(await readFile(back)).digest("hex")).toBe(base.manifest.sha256);

    // An outage: segments keep landing locally, and are copied once S3 is back.
    await s3.stop();
    const during: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = (
        await sql<
          { lsn: string }[]
        >`insert into canary values (${`outage-${i}`}) returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      during.push(segmentName(1, segnoOf(parseLsn(r.lsn), segmentBytes), segmentBytes));
      await sql`select pg_switch_wal()`;
    }
    await until("the outage segments archived locally and the failure logged", async () => {
      await stream.drain();
      const names = (await listArchive(walRoot(dir))).map((r) => r.name);
      return (
        during.every((n) => names.includes(n)) && lines.some((l) => l.msg === "wal off-site copy failed; retrying")
      );
    });
    await s3.start();
    await until("the catch-up", async () => {
      const o = await objects(config);
      return (
        during.every((n) => o.has(`${n}.zst.age`) && o.has(`${n}.json`)) &&
        lines.some((l) => l.msg === "wal off-site copy caught up")
      );
    });
    // Every archived record now names its checked copy.
    expect((await listArchive(walRoot(dir))).filter((r) => r.kind === "segment").every((r) => r.offsite?.s3)).toBe(
      true,
    );
    expect((await pitrStatus(sql, config)).offsite!.notCopied).toBe(0);

    // restore_command on a host with only the off-site copy: fetched and checked; S3 down aborts, never "no more WAL".
    const elsewhere = await tempDir("wal-s3-restore");
    const fetchEnv = { ...env, BACKUP_DIR: elsewhere, BACKUP_AGE_IDENTITY: key, BACKUP_AGE_RECIPIENTS: "" };
    const target = join(elsewhere, "RECOVERYXLOG");
    const got = await shinkei(["pitr", "wal-fetch", seg, target], fetchEnv);
    expect(got.stderr).toBe("");
    expect(got).toSucceed();
    expect(new Bun.CryptoHasher("sha256").update(await readFile(target)).digest("hex")).toBe(record.originalSha256);
    const missing = await shinkei(["pitr", "wal-fetch", "0000000100000000000000FF", target], fetchEnv);
    expect(missing.code).toBe(1);
    // PostgreSQL asks past the end at every recovery: its log gets a plain line, not an error.
    expect(missing.stderr).not.toContain("✖");
    expect(missing.stderr).toMatch(
      /^0000000100000000000000FF is in neither the local WAL archive nor \S+ \(the end of the archive there\)\n$/,
    );
    await s3.stop();
    const down = await shinkei(["pitr", "wal-fetch", during[0]!, join(elsewhere, "X")], fetchEnv);
    expect(down.code).toBe(126);
    expect(await Bun.file(join(elsewhere, "X")).exists()).toBe(false);
    await s3.start();
  } finally {
    await stream.stop();
  }
});

test("S3 down under writes: off-site lag past PITR_OFFSITE_MAX_LAG fails check, is shown, and clears", async () => {
  const dir = await tempDir("wal-s3-lag");
  const env = {
    DATABASE_URL: cluster.url("shinkei"),
    BACKUP_DIR: dir,
    WAL_ARCHIVE: "stream",
    WAL_SLOT: "shinkei_lag",
    WAL_PARTIAL_UPLOAD_INTERVAL: "1s",
    PITR_OFFSITE_MAX_LAG: "3s",
    ...s3.env("lag/"),
  };
  const config = loadConfig(env);
  const lines: Record<string, unknown>[] = [];
  const stream = await startWalStream({ sql, config, log: (l) => void lines.push(l), pollMs: 100, uploadEveryMs: 200 });
  // A scrape of its own each time: a registry keeps its facts for a second.
  const scrape = () =>
    new Metrics({
      sources: [archiveSource(dir, archiveTrust(config.backup.age), config.backup, config.wal.maxLagMs, { config })],
    }).text();
  const lag = async (kind: string) =>
    Number(new RegExp(`^shinkei_offsite_lag_seconds\\{kind="${kind}"\\} (\\S+)$`, "m").exec(await scrape())?.[1]);
  const offsiteProblems = async () =>
    (await shinkei(["backup", "check"], env)).stderr.split("\n").filter((l) => l.includes("PITR_OFFSITE_MAX_LAG"));
  try {
    await createBaseBackup({
      sql,
      url: config.databaseUrl,
      backupDir: dir,
      reason: "manual",
      fast: true,
      age: config.backup.age,
    });
    const write = async (v: string) => {
      const { lsn } = (
        await sql<
          { lsn: string }[]
        >`insert into canary values (${v}) returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await receiverFlushed(sql, lsn);
    };
    await write("before-the-outage");
    await until("everything off-site", async () => {
      const o = (await pitrStatus(sql, config)).offsite!;
      return o.basesNotCopied === 0 && o.notCopied === 0 && o.lagSeconds < 2;
    });
    // Healthy off-site: the check may fail for other reasons here (no dump, no drill), never this one.
    expect(await offsiteProblems()).toEqual([]);
    expect(await lag("base")).toBe(0);

    await s3.stop();
    await createBaseBackup({
      sql,
      url: config.databaseUrl,
      backupDir: dir,
      reason: "manual",
      fast: true,
      age: config.backup.age,
    });
    // Writes go on until the copy trails by more than PITR_OFFSITE_MAX_LAG (3 s) as measured, not for
    // a fixed time: a few seconds, however busy the machine.
    const started = Date.now();
    let status = await pitrStatus(sql, config);
    for (let i = 0; !(status.offsite!.lagSeconds > 3 && status.offsite!.baseLagSeconds > 3); i++) {
      if (Date.now() - started > 30_000)
        throw new Error(`the off-site lag never passed 3 s: ${JSON.stringify(status)}`);
      await write(`during-the-outage-${i}`);
      await sql`select pg_switch_wal()`;
      await Bun.sleep(300);
      await stream.drain();
      status = await pitrStatus(sql, config);
    }
    expect(status.offsite!.lagSeconds).toBeGreaterThan(3);
    expect(status.offsite!.basesNotCopied).toBe(1);
    expect(status.offsite!.baseLagSeconds).toBeGreaterThan(3);
    const red = await shinkei(["backup", "check"], env);
    expect(red.code).toBe(1);
    const problems = red.stderr.split("\n").filter((l) => l.includes("PITR_OFFSITE_MAX_LAG"));
    expect(problems.some((l) => l.includes("the off-site WAL copy") && l.includes("trails the local archive"))).toBe(
      true,
    );
    expect(problems.some((l) => l.includes("1 base backup(s) not copied"))).toBe(true);
    expect(await lag("wal")).toBeGreaterThan(3);
    expect(await lag("base")).toBeGreaterThan(3);
    expect(await scrape()).toContain('shinkei_offsite_max_lag_seconds{kind="wal"} 3');

    await s3.start();
    await until(
      "the catch-up",
      async () => {
        const o = (await pitrStatus(sql, config)).offsite!;
        return o.basesNotCopied === 0 && o.notCopied === 0 && o.lagSeconds < 2;
      },
      60_000,
    );
    expect(await offsiteProblems()).toEqual([]);
    expect(await lag("base")).toBe(0);
  } finally {
    await stream.stop();
    await sql`select pg_drop_replication_slot('shinkei_lag')`.catch(() => {});
  }
});

test("a record signed while its segment was copied off-site keeps its signature; the copy is recorded", async () => {
  const root = walRoot(await tempDir("wal-mirror"));
  const source = join(await tempDir("wal-mirror-spool"), segmentName(1, 3n));
  await writeFile(source, crypto.getRandomValues(new Uint8Array(1 << 20)));
  const { record } = await archiveWalFile(source, root, { segmentBytes: 1 << 20 });
  expect(record.signature).toBeUndefined();
  // A real folder store whose copy waits until the record was signed meanwhile (`pitr sign`).
  const local = new LocalStore(await tempDir("wal-mirror-copies"), walNaming);
  let signedMeanwhile = false;
  const store: BackupStore = Object.assign(Object.create(local), {
    put: async (name: string, path: string) => {
      if (!signedMeanwhile) {
        await writeRecord(root, signWalRecord(record, "a manifest key"));
        signedMeanwhile = true;
      }
      return local.put(name, path);
    },
  });
  await mirrorWalRecord(store, root, record);
  const now = await readRecord(recordPath(root, 1, record.name));
  expect(now?.signature).toBe(signWalRecord(record, "a manifest key").signature);
  expect(now?.offsite?.local?.location).toBe(local.location);
  expect(walRecordProblem(now!, { key: "a manifest key", encrypts: false })).toBeNull();
});

test("a segment pruned while it was copied off-site stays pruned: its record is not written back", async () => {
  const root = walRoot(await tempDir("wal-mirror"));
  const source = join(await tempDir("wal-mirror-spool"), segmentName(1, 4n));
  await writeFile(source, crypto.getRandomValues(new Uint8Array(1 << 20)));
  const { record } = await archiveWalFile(source, root, { segmentBytes: 1 << 20 });
  const local = new LocalStore(await tempDir("wal-mirror-copies"), walNaming);
  let pruned = false;
  const store: BackupStore = Object.assign(Object.create(local), {
    put: async (name: string, path: string) => {
      const put = await local.put(name, path);
      // Retention takes the segment (record, then file) once its copy is up, before the record is rewritten.
      if (!pruned) {
        await rm(recordPath(root, 1, record.name));
        await rm(join(root, "00000001", record.file));
        pruned = true;
      }
      return put;
    },
  });
  await mirrorWalRecord(store, root, record).catch(() => {});
  expect(await readRecord(recordPath(root, 1, record.name))).toBeNull();
  expect(await listArchive(root)).toEqual([]);
});
