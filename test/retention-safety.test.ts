import { expect, test } from "bun:test";
import { mkdir, readdir, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { obtainBackup } from "../src/backup/catalog.ts";
import { checkFreshness, newestGood } from "../src/backup/freshness.ts";
import { readSnapshot } from "../src/metrics/snapshot.ts";
import { pruneLocal, pruneStore } from "../src/backup/prune.ts";
import { loadConfig } from "../src/config/index.ts";
import { ShinkeiError } from "../src/errors.ts";
import { LocalStore } from "../src/storage/local.ts";
import { backupName } from "../src/storage/naming.ts";
import type { BackupStore } from "../src/storage/store.ts";
import { listBaseBackups } from "../src/wal/base.ts";
import { walNaming } from "../src/wal/offsite.ts";
import { pruneWalLocal, pruneWalStore } from "../src/wal/prune.ts";
import { verifyBaseBackup } from "../src/wal/verify-base.ts";
import { tempDir } from "./support/fixtures.ts";
import { seededDatabase } from "./support/backup.ts";
import { until } from "./support/wait.ts";
import { createBackup } from "../src/backup/dump.ts";
import { signManifest } from "../src/backup/manifest.ts";

/*
 * Retention deleting what a user still needs. Each test sets up what an unlucky host (or anyone who
 * can write to BACKUP_DIR) leaves behind, runs the real retention, and checks what README promises:
 * "never the newest good backup", "nothing a kept base backup needs".
 */

const DAY = 86_400_000;
const config = (dir: string, extra: Record<string, string> = {}) =>
  loadConfig({ DATABASE_URL: "postgres://postgres@127.0.0.1:5432/prune_holes", BACKUP_DIR: dir, ...extra });
/** The database `config` names, on its server: whose backups retention and restore's default see. */
const holes = { database: "prune_holes", host: "127.0.0.1", port: 5432 };

/** A dump and its manifest (size agreeing: a good backup) in `dir`, named for `at`, taken on holes' server. */
async function plantDump(dir: string, at: Date, database: string, reason = "scheduled"): Promise<string> {
  const name = backupName(at);
  const content = `-- a dump of ${database} taken ${at.toISOString()}\n`;
  await writeFile(join(dir, name), content);
  await writeFile(
    join(dir, `${name}.manifest.json`),
    JSON.stringify({ file: name, reason, database, host: holes.host, port: holes.port, sizeBytes: content.length }),
  );
  return name;
}

test("a backup named in the future (a clock ahead) does not cost the real newest backup its place", async () => {
  const dir = await tempDir("prune-future");
  // The service was down for six weeks: the newest real backup is 40 days old. A backup taken once
  // while the host's clock ran a year ahead (or a file planted with such a name) is also there.
  const real = await plantDump(dir, new Date(Date.now() - 40 * DAY), "prune_holes");
  await plantDump(dir, new Date(Date.now() + 365 * DAY), "prune_holes");
  // What restore's default takes: never a name dated in the future (README).
  expect(await obtainBackup(dir, undefined, undefined, holes)).toBe(join(dir, real));

  const r = await pruneLocal(config(dir), { dryRun: false });
  // "never the newest good backup": the backup every default restores must survive retention.
  expect(r.removed).not.toContain(real);
  expect(await obtainBackup(dir, undefined, undefined, holes)).toBe(join(dir, real));
});

test("a backup named in the future is not the newest good one for freshness: check sees the old one", async () => {
  const dir = await tempDir("fresh-future");
  const real = await plantDump(dir, new Date(Date.now() - 3 * DAY), "prune_holes");
  await plantDump(dir, new Date(Date.now() + 365 * DAY), "prune_holes");
  const { newest } = await newestGood(dir, holes);
  expect(newest?.name).toBe(real);
  // The metrics and the status page read the same.
  expect((await readSnapshot(dir, undefined)).newestGood?.name).toBe(real);
  await expect(checkFreshness(dir, DAY, 30 * DAY, undefined, holes)).rejects.toThrow(
    `the newest good backup (${real}) is 3d 0h old, more than 1d 0h`,
  );
});

test("freshness counts neither a safety copy nor another database's backup: check sees the real newest", async () => {
  const dir = await tempDir("fresh-safety");
  const real = await plantDump(dir, new Date(Date.now() - 3 * DAY), "prune_holes");
  // A restore an hour ago kept the state it replaced; another database shares the folder.
  await plantDump(dir, new Date(Date.now() - 3600_000), "prune_holes", "pre-restore");
  await plantDump(dir, new Date(Date.now() - 60_000), "another_app");
  expect((await newestGood(dir, holes)).newest?.name).toBe(real);
  // The metrics, the status page and the scheduled drill read the same.
  expect((await readSnapshot(dir, undefined, { owner: holes })).newestGood?.name).toBe(real);
  await expect(checkFreshness(dir, DAY, 30 * DAY, undefined, holes)).rejects.toThrow(
    `the newest good backup (${real}) is 3d 0h old, more than 1d 0h`,
  );
});

test("off-site: a copy named in the future does not cost the real newest copy its place", async () => {
  const bucket = await tempDir("prune-future-bucket");
  const real = await plantDump(bucket, new Date(Date.now() - 40 * DAY), "prune_holes");
  await plantDump(bucket, new Date(Date.now() + 365 * DAY), "prune_holes");
  const store = new LocalStore(bucket);
  const policy = config(bucket).backup;
  const r = await pruneStore(store, 30, policy, false, holes);
  expect(r.removed).not.toContain(real);
  // After a lost disk, restore's default finds the real newest copy off-site.
  const here = await tempDir("prune-future-restore");
  expect(await obtainBackup(here, undefined, store, holes)).toBe(join(here, real));
});

test("a pre-restore safety copy takes no newest good place: the backup restored from stays", async () => {
  const dir = await tempDir("prune-safety");
  // Scheduled backups stopped 40 days ago; the operator restores the newest (a pre-restore safety
  // copy of the current state is taken first), then prunes.
  const restoredFrom = await plantDump(dir, new Date(Date.now() - 40 * DAY), "prune_holes");
  await plantDump(dir, new Date(), "prune_holes", "pre-restore");
  const r = await pruneLocal(config(dir), { dryRun: false });
  // The safety copy is never what a default restores, drills or recovers from (README): the newest
  // good backup is still the one restored from, and it must survive.
  expect(r.removed).not.toContain(restoredFrom);
  expect(await obtainBackup(dir, undefined, undefined, holes)).toBe(join(dir, restoredFrom));
});

const KEY = "k".repeat(32);

/** plantDump's backup, its manifest signed with KEY as a shinkei holding BACKUP_MANIFEST_KEY writes it. */
async function plantSigned(dir: string, at: Date): Promise<string> {
  const name = await plantDump(dir, at, "prune_holes");
  const path = join(dir, `${name}.manifest.json`);
  const m = JSON.parse(await Bun.file(path).text());
  const content = await Bun.file(join(dir, name)).text();
  const signed = { ...m, createdAt: at.toISOString(), schemaVersion: 1, format: "plain+zstd", sha256: hex(content) };
  await writeFile(
    path,
    JSON.stringify({ ...signed, counts: {}, signature: signManifest({ ...signed, counts: {} }, KEY) }),
  );
  return name;
}

test("with BACKUP_MANIFEST_KEY, a planted unsigned or renamed backup takes no place: the real one stays", async () => {
  for (const where of ["local", "off-site"]) {
    const dir = await tempDir("prune-unsigned");
    // The service stopped 40 days ago: its last backup, signed, is the only copy there is. Someone who
    // can write to the bucket (not delete, not sign) adds a backup named an hour ago, unsigned, and an
    // old signed manifest replayed under a newer name.
    const real = await plantSigned(dir, new Date(Date.now() - 40 * DAY));
    await plantDump(dir, new Date(Date.now() - 3600_000), "prune_holes");
    const replayed = backupName(new Date(Date.now() - 7200_000));
    await writeFile(join(dir, replayed), await Bun.file(join(dir, real)).text());
    await writeFile(join(dir, `${replayed}.manifest.json`), await Bun.file(join(dir, `${real}.manifest.json`)).text());
    const signing = config(dir, { BACKUP_MANIFEST_KEY: KEY });
    const r =
      where === "local"
        ? await pruneLocal(signing, { dryRun: false })
        : await pruneStore(new LocalStore(dir), 30, signing.backup, false, holes, KEY);
    // Neither verifies, so neither is a good backup: the signed one is still the newest good backup.
    expect({ where, removed: r.removed }).toEqual({ where, removed: [] });
    expect(r.decisions.find((d) => d.name === real)?.why).toBe("newest good backup");
  }
});

test("BACKUP_MANIFEST_KEY set on a host with older, unsigned backups: retention leaves them alone", async () => {
  for (const where of ["local", "off-site"]) {
    const dir = await tempDir("prune-key-later");
    const old = [];
    for (const days of [100, 70, 40]) old.push(await plantDump(dir, new Date(Date.now() - days * DAY), "prune_holes"));
    const real = await plantSigned(dir, new Date(Date.now() - DAY));
    const signing = config(dir, { BACKUP_MANIFEST_KEY: KEY });
    const r =
      where === "local"
        ? await pruneLocal(signing, { dryRun: false })
        : await pruneStore(new LocalStore(dir), 30, signing.backup, false, holes, KEY);
    // Deleting them by age would take the monthly history taken before the key with them.
    expect({ where, removed: r.removed, unsigned: r.leftAlone.unsigned }).toEqual({ where, removed: [], unsigned: 3 });
    expect(r.decisions.map((d) => [d.name, d.why])).toEqual([[real, "newest good backup"]]);
    for (const name of old) expect(await Bun.file(join(dir, name)).exists()).toBe(true);
  }
});

test("with BACKUP_MANIFEST_KEY, another database's unsigned backups are its own, and a file beside them", async () => {
  const dir = await tempDir("prune-other-unsigned");
  // The other database's service signs with no key (or another): its backups name it all the same.
  const real = await plantSigned(dir, new Date(Date.now() - DAY));
  const theirs = [];
  for (const days of [50, 45]) theirs.push(await plantDump(dir, new Date(Date.now() - days * DAY), "another_app"));
  const bare = backupName(new Date(Date.now() - 40 * DAY));
  await writeFile(join(dir, bare), "-- still being copied, its manifest not yet here\n");
  const r = await pruneStore(new LocalStore(dir), 30, config(dir).backup, false, holes, KEY);
  expect(r.removed).toEqual([]);
  expect(r.leftAlone).toEqual({ others: 2, groups: 1, unowned: 1, unsigned: 0 });
  expect(r.decisions.map((d) => d.name)).toEqual([real]);
});

test("a backup gone off-site between the listing and its manifest's fetch is passed over, not an error", async () => {
  const bucket = await tempDir("gone-bucket");
  const older = await plantDump(bucket, new Date(Date.now() - 2 * DAY), "prune_holes");
  const newer = await plantDump(bucket, new Date(Date.now() - DAY), "prune_holes");
  // Another service's retention removes the newer one right after this one listed the bucket.
  class Racing extends LocalStore {
    override async list() {
      const listed = await super.list();
      await super.remove(newer);
      return listed;
    }
  }
  const dir = await tempDir("gone-local");
  expect(await obtainBackup(dir, undefined, new Racing(bucket), holes)).toBe(join(dir, older));
  const r = await pruneStore(new Racing(bucket), 30, config(dir).backup, false, holes);
  expect(r.removed).toEqual([]);
});

test("with BACKUP_MANIFEST_KEY, freshness counts no unsigned or renamed backup: check sees the real one", async () => {
  const dir = await tempDir("fresh-unsigned");
  // Backups stopped three days ago. A planted backup named a minute ago (unsigned), and the real one
  // replayed under the name of an hour ago, must not make the monitors say all is well.
  const real = await plantSigned(dir, new Date(Date.now() - 3 * DAY));
  await plantDump(dir, new Date(Date.now() - 60_000), "prune_holes");
  const replayed = backupName(new Date(Date.now() - 3600_000));
  await writeFile(join(dir, replayed), await Bun.file(join(dir, real)).text());
  await writeFile(join(dir, `${replayed}.manifest.json`), await Bun.file(join(dir, `${real}.manifest.json`)).text());
  const age = config(dir, { BACKUP_MANIFEST_KEY: KEY }).backup.age;
  expect((await newestGood(dir, holes, KEY)).newest?.name).toBe(real);
  // The metrics and the status page read the same.
  expect((await readSnapshot(dir, undefined, { owner: holes, manifestKey: KEY })).newestGood?.name).toBe(real);
  await expect(checkFreshness(dir, DAY, 30 * DAY, age, holes)).rejects.toThrow(
    `the newest good backup (${real}) is 3d 0h old, more than 1d 0h`,
  );
});

/* ---- base backups and WAL ---- */

const SEG = 16 * 1024 * 1024;
const segName = (n: number) => `00000001${"00000000"}${n.toString(16).toUpperCase().padStart(8, "0")}`;
const hex = (s: string) => new Bun.CryptoHasher("sha256").update(s).digest("hex");
const stampOf = (at: Date) => at.toISOString().replace(/[-:]/g, "").replace("T", "_").slice(0, 15);

/** A base backup's three files as BACKUP_DIR/base (or a bucket's wal/ folder) holds them; its manifest. */
async function plantBase(dir: string, at: Date, startSeg: number) {
  const name = `shinkei_base_${stampOf(at)}.tar.zst`;
  const backupManifestFile = `shinkei_base_${stampOf(at)}.backup_manifest.zst`;
  const content = `base backup taken ${at.toISOString()}`;
  const bm = `backup_manifest of ${name}`;
  await writeFile(join(dir, name), content);
  await writeFile(join(dir, backupManifestFile), bm);
  const manifest = {
    baseManifestVersion: 1,
    file: name,
    backupManifestFile,
    startedAt: at.toISOString(),
    finishedAt: new Date(at.getTime() + 60_000).toISOString(),
    timeline: 1,
    startLsn: `0/${(startSeg * SEG + 40).toString(16).toUpperCase()}`,
    stopLsn: `0/${(startSeg * SEG + 4000).toString(16).toUpperCase()}`,
    startSegment: segName(startSeg),
    stopSegment: segName(startSeg),
    segmentBytes: SEG,
    host: "127.0.0.1",
    port: 5432,
    serverVersion: "17.0",
    pgBasebackupVersion: "17.0",
    format: "tar+gzip",
    sizeBytes: content.length,
    sha256: hex(content),
    originalBytes: content.length,
    backupManifestSha256: hex(bm),
    reason: "scheduled",
    durationMs: 1000,
  };
  await writeFile(join(dir, `${name}.manifest.json`), JSON.stringify(manifest, null, 2));
  return { name, manifest };
}

/** An archived segment and its record in the local archive (BACKUP_DIR/wal/00000001). */
async function plantLocalSegment(backupDir: string, n: number) {
  const dir = join(backupDir, "wal", "00000001");
  await mkdir(dir, { recursive: true });
  const name = segName(n);
  const bytes = `segment ${name}`;
  await writeFile(join(dir, `${name}.zst`), bytes);
  const record = {
    walRecordVersion: 1,
    name,
    kind: "segment",
    timeline: 1,
    file: `${name}.zst`,
    sizeBytes: bytes.length,
    sha256: hex(bytes),
    originalBytes: 1024,
    originalSha256: hex(`plain ${name}`),
    segmentBytes: SEG,
    receivedAt: new Date().toISOString(),
    archivedAt: new Date().toISOString(),
  };
  await writeFile(join(dir, `${name}.json`), JSON.stringify(record));
}

test("a base backup its check found damaged is not the good one: the last restorable base and WAL stay", async () => {
  const backupDir = await tempDir("prune-damaged-base");
  const base = join(backupDir, "base");
  await mkdir(base, { recursive: true });
  // The previous base (40 days old: weekly base backups that failed for a while) and its WAL.
  const good = await plantBase(base, new Date(Date.now() - 40 * DAY), 2);
  // Today's base: the disk flipped bytes in it after it was written. Same size, wrong SHA-256.
  const damaged = await plantBase(base, new Date(Date.now() - 60_000), 8);
  await writeFile(join(base, damaged.name), `base backup TAKEN ${new Date(Date.now() - 60_000).toISOString()}`);
  for (let n = 2; n <= 9; n++) await plantLocalSegment(backupDir, n);

  // The WAL service checks every new base before retention runs (wal/service.ts): it fails.
  const listed = (await listBaseBackups(backupDir)).find((b) => b.name === damaged.name)!;
  const v = await verifyBaseBackup(backupDir, listed);
  expect(v.ok).toBe(false);
  expect(v.problems.join()).toContain("does not match the SHA-256");

  const r = await pruneWalLocal(config(backupDir), { dryRun: false });
  // "never the newest good backup": a base recorded as damaged is not it; the 40-day-old one is,
  // and "nothing a kept base backup needs" is deleted.
  expect(r.removed).not.toContain(good.name);
  expect(await readdir(base)).toContain(good.name);
  expect(await readdir(join(backupDir, "wal", "00000001"))).toContain(`${segName(2)}.zst`);
});

test("off-site WAL retention: a manifest that fails to download once does not let its base's WAL go", async () => {
  const bucket = await tempDir("prune-wal-bucket");
  const inner = new LocalStore(bucket, walNaming);
  // Two base backups off-site, both young enough to keep (S3_KEEP_DAYS=60), and the WAL since the older.
  const older = await plantBase(bucket, new Date(Date.now() - 20 * DAY), 2);
  await plantBase(bucket, new Date(Date.now() - 5 * DAY), 6);
  for (let n = 2; n <= 7; n++) {
    await writeFile(join(bucket, `${segName(n)}.zst`), `segment ${n}`);
    await writeFile(join(bucket, `${segName(n)}.json`), `{"record":${n}}`);
  }
  // The store answers every call but one: the older base's manifest, once (a reset connection, a 503
  // after the SDK's retries). The contract: an unreachable store is STORE_FAILED, never an empty answer.
  let failed = false;
  const flaky: BackupStore = {
    kind: "s3",
    location: inner.location,
    naming: inner.naming,
    list: () => inner.list(),
    put: (n, p) => inner.put(n, p),
    remove: (n) => inner.remove(n),
    get: async (name, path) => {
      if (!failed && name === `${older.name}.manifest.json`) {
        failed = true;
        throw new ShinkeiError("STORE_FAILED", `downloading ${name} at ${inner.location} failed: ECONNRESET`);
      }
      return inner.get(name, path);
    },
  };
  await pruneWalStore(flaky, 60, config(bucket).backup, false).catch(() => null);
  expect(failed).toBe(true);
  // The older base is kept (60 days), so is every segment from its start: whether the run stops on the
  // error or goes on, WAL the kept base needs must not be deleted.
  const left = await readdir(bucket);
  expect(left).toContain(older.name);
  for (let n = 2; n <= 5; n++) expect(left).toContain(`${segName(n)}.zst`);
});

test("a base backup whose WAL never came (a lost slot) is not the good one: the last good one stays", async () => {
  const backupDir = await tempDir("prune-incomplete-base");
  const base = join(backupDir, "base");
  await mkdir(base, { recursive: true });
  const good = await plantBase(base, new Date(Date.now() - 40 * DAY), 2);
  // Segments 2..5 archived; then the slot was lost (max_slot_wal_keep_size): 6..8 never came, and
  // today's base starts and stops in 8. Nothing can ever replay it.
  await plantBase(base, new Date(Date.now() - 60_000), 8);
  for (let n = 2; n <= 5; n++) await plantLocalSegment(backupDir, n);

  const r = await pruneWalLocal(config(backupDir), { dryRun: false });
  // The 40-day-old base is the newest one that restores; it and its WAL must stay.
  expect(r.removed).not.toContain(good.name);
  expect(await readdir(base)).toContain(good.name);
  expect(await readdir(join(backupDir, "wal", "00000001"))).toContain(`${segName(2)}.zst`);
});

test("one BACKUP_DIR for two databases: one never takes the other's in progress for a stale .partial", async () => {
  const a = await seededDatabase("prune_shared_a", "a");
  const b = await seededDatabase("prune_shared_b", "b");
  const dir = await tempDir("prune-shared-partial");
  let release = () => {};
  const held = new Promise<void>((r) => (release = r));
  try {
    // B's app runs a long migration: it holds a table, and B's pg_dump waits on that lock before it
    // writes a byte (pg_dump locks every table first), its .partial created and empty.
    let locked = false;
    const migration = b.sql.begin(async (tx) => {
      await tx`lock table story_beats in access exclusive mode`;
      locked = true;
      await held;
    });
    await until("the lock", async () => locked);
    const running = createBackup({ sql: b.sql, url: b.url, dir, reason: "scheduled" });
    running.catch(() => {});
    const partial = await until("B's .partial", async () => (await readdir(dir)).find((n) => n.endsWith(".partial")));
    // Eleven minutes on, the migration still runs. A stand-in: the file's time set back eleven
    // minutes, then a minute of the backup still running (whatever a live writer does to show it is
    // alive in that time, it does here too).
    const past = new Date(Date.now() - 11 * 60_000);
    await utimes(join(dir, partial), past, past);
    await until(
      "a minute of B's backup running",
      async () => {
        const s = await stat(join(dir, partial)).catch(() => null);
        return s !== null && s.mtimeMs > past.getTime() + 60_000;
      },
      61_000,
    ).catch(() => {});
    // A's scheduled backup runs meanwhile (another database: another maintenance lock).
    await createBackup({ sql: a.sql, url: a.url, dir, reason: "scheduled" });
    release();
    await migration;
    // B's backup, which was never abandoned, must finish.
    const r = await running;
    expect(await Bun.file(r.path).exists()).toBe(true);
  } finally {
    release();
    await a.drop();
    await b.drop();
  }
}, 120_000);

test("one bucket prefix for two servers whose databases share a name: each keeps its own monthly places", async () => {
  const bucket = await tempDir("prune-same-name");
  const plantOn = async (daysAgo: number, host: string) => {
    const name = await plantDump(bucket, new Date(Date.now() - daysAgo * DAY), "shinkei");
    const m = JSON.parse(await Bun.file(join(bucket, `${name}.manifest.json`)).text());
    await writeFile(join(bucket, `${name}.manifest.json`), JSON.stringify({ ...m, host, port: 5432 }));
    return name;
  };
  // Production backs up at 02:00, staging (the compose default database name too) a few hours later.
  const prod: string[] = [];
  for (const d of [95, 65, 35]) prod.push(await plantOn(d, "db-prod.internal"));
  for (const d of [94.99, 64.99, 34.99, 1]) await plantOn(d, "db-staging.internal");
  const policy = { ...config(bucket).backup, keepMonthly: 4 };
  // Production's service prunes: staging's copies are its own service's to prune.
  const production = { database: "shinkei", host: "db-prod.internal", port: 5432 };
  const r = await pruneStore(new LocalStore(bucket), 30, policy, false, production);
  // Counted together, staging's later backups took every monthly place: production's monthly
  // backups (its only copies of those months) are deleted.
  expect(r.removed.filter((n) => prod.includes(n))).toEqual([]);
  expect(r.leftAlone).toEqual({ others: 4, groups: 1, unowned: 0, unsigned: 0 });
});
