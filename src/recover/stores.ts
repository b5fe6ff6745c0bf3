import { basename, dirname, join } from "node:path";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import type { MirrorReport } from "../backup/offsite.ts";
import type { Decision } from "../backup/retention.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { LocalStore } from "../storage/local.ts";
import { mirror } from "../storage/mirror.ts";
import { offsiteStore } from "../storage/stores.ts";
import type { BackupStore } from "../storage/store.ts";
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
export async function mirrorMissingRecoveries(store: BackupStore, dir: string): Promise<MirrorReport> {
  const report: MirrorReport = { copied: [], failed: [] };
  for (const r of await history(dir)) {
    if (!r.undo || r.offsite?.[store.kind]) continue;
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

async function apply(store: BackupStore, decisions: Decision[], dryRun: boolean): Promise<RecordPruneReport> {
  const removed: string[] = [];
  if (!dryRun) {
    for (const d of decisions.filter((d) => !d.keep)) {
      // Removes the record first, then its safety copy (its companions).
      await store.remove(d.name);
      removed.push(d.name);
    }
  }
  return { what: "recovery records", location: store.location, decisions, removed };
}

/**
 * Retention of the records in BACKUP_DIR. With an off-site store, a record with a safety copy not
 * yet copied there stays however old: it would be the only undo.
 */
export async function pruneLocalRecoveries(
  config: Pick<Config, "backupDir" | "retention">,
  options: { dryRun: boolean; offsite?: BackupStore; now?: Date },
): Promise<RecordPruneReport> {
  const local = new LocalStore(config.backupDir, recoveryNaming);
  const unmirrored = new Set<string>();
  if (options.offsite) {
    for (const r of await history(config.backupDir)) {
      const p = parseRecoveryName(basename(r.path));
      if (p && r.undo && !r.offsite?.[options.offsite.kind]) unmirrored.add(p.base);
    }
  }
  const names = (await local.list()).map((o) => o.name);
  return apply(
    local,
    planRecords(names, config.retention.recoverRecordsMs, options.now ?? new Date(), unmirrored),
    options.dryRun,
  );
}

/** Retention of the records off-site: the same RECOVER_RECORD_KEEP; only our names under the folder are listed. */
export async function pruneStoreRecoveries(
  store: BackupStore,
  keepMs: number,
  options: { dryRun: boolean; now?: Date },
): Promise<RecordPruneReport> {
  const names = (await store.list()).map((o) => o.name);
  return apply(store, planRecords(names, keepMs, options.now ?? new Date(), new Set()), options.dryRun);
}

/** Both, as `shinkei backup prune` and the backup service run them: local first, then off-site. */
export async function pruneRecoveries(
  config: Pick<Config, "backupDir" | "retention" | "s3">,
  dryRun: boolean,
): Promise<RecordPruneReport[]> {
  const store = recoveryStore(config);
  const reports = [await pruneLocalRecoveries(config, { dryRun, offsite: store })];
  if (store) reports.push(await pruneStoreRecoveries(store, config.retention.recoverRecordsMs, { dryRun }));
  return reports;
}
