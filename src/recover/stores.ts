import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import { describeTarget } from "../pg/db.ts";
import { serverOf, type Owner } from "../backup/catalog.ts";
import type { MirrorReport } from "../backup/offsite.ts";
import type { LeftAlone } from "../backup/prune.ts";
import type { Decision } from "../backup/retention.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { LocalStore } from "../storage/local.ts";
import { copiedTo, mirror } from "../storage/mirror.ts";
import { offsiteStore } from "../storage/stores.ts";
import { RECORD_MAX_BYTES, TooLargeObject, type BackupStore } from "../storage/store.ts";
import { history, parseRecoveryName, recoveryNaming, type RecoveredRecord } from "./record.ts";

/**
 * Where recovery records are kept besides BACKUP_DIR, and for how long. Off-site they live in a
 * folder of their own (`S3_PREFIX` + `recoveries/`), each record with its safety copy, so a lost
 * disk does not lose the undo; RECOVER_RECORD_KEEP decides when either copy goes.
 */
export function recoveryStore(config: Pick<Config, "s3">): BackupStore | undefined {
  return offsiteStore(config, { folder: "recoveries/", naming: recoveryNaming });
}

/**
 * Copy one record off-site as backups go: its safety copy first, then the record naming the checked
 * copy (the local record keeps that note only once both are up). The record's signature does not
 * cover the note, so the copy checks exactly as the local one.
 */
export async function mirrorRecovery(store: BackupStore, recordPath: string): Promise<void> {
  const name = basename(recordPath);
  const record = (await Bun.file(recordPath)
    .json()
    .catch(() => null)) as RecoveredRecord | null;
  const file = record?.undo?.file;
  if (!parseRecoveryName(name)?.isRecord || typeof file !== "string" || parseRecoveryName(file)?.isRecord !== false)
    throw new ShinkeiError("STORE_FAILED", `${name} is not a recovery record with a safety copy: nothing to copy`);
  await mirror(store, {
    files: [{ name: file, path: join(dirname(recordPath), file) }],
    record: record!,
    writeRecord: (r) => writeFileAtomic(recordPath, `${JSON.stringify(r, null, 2)}\n`),
    recordObject: { name, path: recordPath },
    describe: (copy) => ({ sizeBytes: copy.sizeBytes, verified: copy.verified }),
  });
}

/**
 * Right after a recovery commits: its record off-site, when a store is configured. A failure is
 * told, not thrown (the recovery stands, and its local undo with it); the backup service's next
 * off-site pass copies it then.
 */
export async function copyRecoveryOffsite(config: Pick<Config, "s3">, recordPath: string): Promise<string | undefined> {
  const store = recoveryStore(config);
  if (!store) return undefined;
  return mirrorRecovery(store, recordPath).then(
    () => `copied to ${store.location}`,
    (e: Error) => `FAILED (${e.message}); the backup service's next run copies it`,
  );
}

/**
 * Copy every local record with a safety copy that is not off-site yet, oldest first: the backup
 * service's pass, catching up on recoveries whose own copy failed. One failure does not stop the others.
 */
export async function mirrorMissingRecoveries(store: BackupStore, dir: string, owner: Owner): Promise<MirrorReport> {
  const report: MirrorReport = { copied: [], failed: [] };
  for (const r of await history(dir)) {
    // Another database's records sharing the folder are its own service's to copy, to its own place.
    if (!r.undo || !recordIsOwners(r, owner) || copiedTo(r, store)) continue;
    try {
      await mirrorRecovery(store, r.path);
      report.copied.push(basename(r.path));
    } catch (e) {
      report.failed.push({ name: basename(r.path), error: (e as Error).message });
    }
  }
  return report;
}

export type RecordPruneReport = {
  what: "recovery records";
  location: string;
  decisions: Decision[];
  removed: string[];
  /** Recoveries of other databases (or servers), and ones whose record does not say whose, left alone. */
  leftAlone: LeftAlone;
};

const DAY = 86_400_000;
const keepText = (ms: number) => (ms % DAY === 0 ? `${ms / DAY}d` : `${Math.round(ms / 1000)}s`);

/**
 * Decide for each recovery in a store (a record and its safety copy, by the time it was applied,
 * which its name carries) whether it stays. Never removed: one younger than RECOVER_RECORD_KEEP
 * (0 keeps every one), and one whose record is not yet copied off-site (`unmirrored`).
 */
export function planRecords(names: string[], keepMs: number, now: Date, unmirrored: Set<string>): Decision[] {
  const groups = new Map<string, { name: string; appliedAt: Date; hasRecord: boolean }>();
  for (const n of names) {
    const p = parseRecoveryName(n);
    if (!p) continue;
    const g = groups.get(p.base);
    // The record names the group; a safety copy only stands for one whose record is gone.
    if (!g || (p.isRecord && !g.hasRecord))
      groups.set(p.base, { name: n, appliedAt: p.appliedAt, hasRecord: p.isRecord });
  }
  const keep = keepText(keepMs);
  return [...groups.entries()]
    .sort(([, a], [, b]) => b.appliedAt.getTime() - a.appliedAt.getTime())
    .map(([base, g]) => {
      if (keepMs === 0) return { name: g.name, keep: true, why: "RECOVER_RECORD_KEEP=0 keeps every record" };
      if (now.getTime() - g.appliedAt.getTime() <= keepMs)
        return { name: g.name, keep: true, why: `within RECOVER_RECORD_KEEP (${keep})` };
      if (unmirrored.has(base)) return { name: g.name, keep: true, why: "not yet copied off-site" };
      return {
        name: g.name,
        keep: false,
        why: g.hasRecord ? `older than ${keep}` : `a safety copy without its record, older than ${keep}`,
      };
    });
}

/**
 * The names of `owner`'s recoveries among `names` (a record and its safety copy go together, by
 * their base name), with what was left alone. `records` holds the readable records, by base. As
 * for backups (backup/prune.ts): in a folder or prefix several services share, each prunes only its
 * own database's recoveries on its own server, by its own RECOVER_RECORD_KEEP; another's may not
 * be copied off-site yet, or be kept longer there. A record written before records named their
 * server is judged by its database alone. A recovery whose record is gone or unreadable (an
 * orphaned safety copy) says nothing of whose it is: decided as before where every readable record
 * is the owner's, left alone where another's are present.
 */
/** Whether a recovery record is `owner`'s: its database on its server (a record naming no server: by name). */
const recordIsOwners = (r: RecoveredRecord, owner: Owner): boolean =>
  r.database === owner.database && (serverOf(r) === null || serverOf(r) === serverOf(owner));

export function ownRecoveries(
  names: string[],
  records: Map<string, RecoveredRecord>,
  owner: Owner,
): { names: string[]; leftAlone: LeftAlone } {
  const whose = new Map<string, "mine" | "other" | "unknown">();
  const groups = new Set<string>();
  for (const n of names) {
    const base = parseRecoveryName(n)?.base;
    if (base === undefined || whose.has(base)) continue;
    const r = records.get(base);
    if (!r || typeof r !== "object" || typeof r.database !== "string") whose.set(base, "unknown");
    else if (recordIsOwners(r, owner)) whose.set(base, "mine");
    else {
      whose.set(base, "other");
      groups.add(JSON.stringify([r.database, serverOf(r)]));
    }
  }
  const count = (w: string) => [...whose.values()].filter((x) => x === w).length;
  const others = count("other");
  const decided = (n: string) => {
    const w = whose.get(parseRecoveryName(n)?.base ?? "");
    return w === "mine" || (w === "unknown" && others === 0);
  };
  return {
    names: names.filter(decided),
    leftAlone: { others, groups: groups.size, unowned: others ? count("unknown") : 0 },
  };
}

async function apply(
  store: BackupStore,
  decisions: Decision[],
  leftAlone: LeftAlone,
  dryRun: boolean,
): Promise<RecordPruneReport> {
  const removed: string[] = [];
  if (!dryRun) {
    for (const d of decisions.filter((d) => !d.keep)) {
      // Removes the record first, then its safety copy (its companions).
      await store.remove(d.name);
      removed.push(d.name);
    }
  }
  return { what: "recovery records", location: store.location, decisions, removed, leftAlone };
}

/**
 * Retention of this database's records in BACKUP_DIR (see ownRecoveries). With an off-site store, a
 * record with a safety copy not yet copied there stays however old: it would be the only undo.
 */
export async function pruneLocalRecoveries(
  config: Pick<Config, "backupDir" | "retention" | "databaseUrl">,
  options: { dryRun: boolean; offsite?: BackupStore; now?: Date },
): Promise<RecordPruneReport> {
  const local = new LocalStore(config.backupDir, recoveryNaming);
  const unmirrored = new Set<string>();
  const records = new Map<string, RecoveredRecord>();
  for (const r of await history(config.backupDir)) {
    const p = parseRecoveryName(basename(r.path));
    if (!p) continue;
    records.set(p.base, r);
    if (options.offsite && r.undo && !copiedTo(r, options.offsite)) unmirrored.add(p.base);
  }
  const own = ownRecoveries(
    (await local.list()).map((o) => o.name),
    records,
    describeTarget(config.databaseUrl),
  );
  return apply(
    local,
    planRecords(own.names, config.retention.recoverRecordsMs, options.now ?? new Date(), unmirrored),
    own.leftAlone,
    options.dryRun,
  );
}

/**
 * Retention of `owner`'s records off-site: the same RECOVER_RECORD_KEEP; only our names under the
 * folder are listed. Each record is read (a small object) for whose it is.
 */
export async function pruneStoreRecoveries(
  store: BackupStore,
  keepMs: number,
  options: { dryRun: boolean; now?: Date; owner: Owner },
): Promise<RecordPruneReport> {
  const names = (await store.list()).map((o) => o.name);
  const own = ownRecoveries(names, await peekRecords(store, names), options.owner);
  return apply(
    store,
    planRecords(own.names, keepMs, options.now ?? new Date(), new Set()),
    own.leftAlone,
    options.dryRun,
  );
}

/** The records among `names` in the store, read through a folder of our own, by base; unreadable ones left out. */
async function peekRecords(store: BackupStore, names: string[]): Promise<Map<string, RecoveredRecord>> {
  const records = new Map<string, RecoveredRecord>();
  const folder = await mkdtemp(join(tmpdir(), "shinkei-records-"));
  try {
    for (const n of names) {
      const p = parseRecoveryName(n);
      if (!p?.isRecord) continue;
      // Too large to be a record: left out, as an unreadable one is, never read whole.
      const fetched = await store.get(n, join(folder, n), { maxBytes: RECORD_MAX_BYTES }).then(
        () => true,
        (e) => {
          if (e instanceof TooLargeObject) return false;
          throw e;
        },
      );
      if (!fetched) continue;
      const r = (await Bun.file(join(folder, n))
        .json()
        .catch(() => null)) as RecoveredRecord | null;
      if (r !== null && typeof r === "object" && !Array.isArray(r)) records.set(p.base, r);
    }
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
  return records;
}

/** Both, as `shinkei backup prune` and the backup service run them: local first, then off-site. */
export async function pruneRecoveries(
  config: Pick<Config, "backupDir" | "retention" | "s3" | "databaseUrl">,
  dryRun: boolean,
): Promise<RecordPruneReport[]> {
  const store = recoveryStore(config);
  const reports = [await pruneLocalRecoveries(config, { dryRun, offsite: store })];
  if (store)
    reports.push(
      await pruneStoreRecoveries(store, config.retention.recoverRecordsMs, {
        dryRun,
        owner: describeTarget(config.databaseUrl),
      }),
    );
  return reports;
}
