import type { Config } from "../config/index.ts";
import { listLocal } from "./catalog.ts";
import { MANIFEST_SUFFIX } from "../storage/naming.ts";
import { planRetention, type Decision } from "./retention.ts";
import { LocalStore } from "../storage/local.ts";
import type { BackupStore } from "../storage/store.ts";

export type PruneReport = { location: string; decisions: Decision[]; removed: string[] };

/** Retention for BACKUP_DIR: a backup is good when its manifest agrees with the file's size. */
export async function pruneLocal(
  config: Config,
  options: { dryRun: boolean; offsite?: BackupStore },
): Promise<PruneReport> {
  const backups = await listLocal(config.backupDir);
  const decisions = planRetention(
    backups.map((b) => ({
      name: b.name,
      good: b.manifest?.sizeBytes === b.sizeBytes,
      mirrored: options.offsite ? Boolean(b.manifest?.offsite?.[options.offsite.kind]) : true,
    })),
    config.backup,
    new Date(),
    options.offsite !== undefined,
  );
  return apply(new LocalStore(config.backupDir), decisions, options.dryRun);
}

/** Retention for an off-site store (S3_KEEP_DAYS): only our names under our prefix are listed at all. */
export async function pruneStore(
  store: BackupStore,
  keepDays: number,
  policy: Config["backup"],
  dryRun: boolean,
): Promise<PruneReport> {
  const objects = await store.list();
  const names = new Set(objects.map((o) => o.name));
  const decisions = planRetention(
    objects
      .filter((o) => !o.name.endsWith(MANIFEST_SUFFIX))
      .map((o) => ({ name: o.name, good: names.has(o.name + MANIFEST_SUFFIX), mirrored: true })),
    { ...policy, keepDays },
    new Date(),
    false,
  );
  return apply(store, decisions, dryRun);
}

async function apply(store: BackupStore, decisions: Decision[], dryRun: boolean): Promise<PruneReport> {
  const removed: string[] = [];
  if (!dryRun) {
    for (const d of decisions.filter((d) => !d.keep)) {
      await store.remove(d.name);
      removed.push(d.name);
    }
  }
  return { location: store.location, decisions, removed };
}
