import type { Config } from "../config/index.ts";
import { listLocal } from "./catalog.ts";
import { MANIFEST_SUFFIX } from "../storage/naming.ts";
import { planRetention, type Decision } from "./retention.ts";
import { LocalStore } from "../storage/local.ts";
import type { BackupStore } from "../storage/store.ts";

export type PruneReport = { location: string; decisions: Decision[]; removed: string[] };

/**
 * Retention for BACKUP_DIR: a backup is good when its manifest agrees with the file's size. Each
 * database's backups (by their manifests) are kept by the policy on their own: in a folder that
 * serves two databases, one's daily backups must not take the other's newest, daily, weekly and
 * monthly places. Files without a manifest are a group of their own (none of them is good).
 */
export async function pruneLocal(
  config: Config,
  options: { dryRun: boolean; offsite?: BackupStore },
): Promise<PruneReport> {
  const backups = await listLocal(config.backupDir);
  const groups = Map.groupBy(backups, (b) => b.manifest?.database ?? null);
  const now = new Date();
  const decided = new Map<string, Decision>();
  for (const [database, group] of groups) {
    const decisions = planRetention(
      group.map((b) => ({
        name: b.name,
        good: b.manifest?.sizeBytes === b.sizeBytes,
        mirrored: options.offsite ? Boolean(b.manifest?.offsite?.[options.offsite.kind]) : true,
      })),
      config.backup,
      now,
      options.offsite !== undefined,
    );
    const of = groups.size > 1 ? (database === null ? " (no manifest)" : ` (of "${database}")`) : "";
    for (const d of decisions) decided.set(d.name, { ...d, why: d.why + of });
  }
  // Newest first across the folder, as listed.
  const decisions = backups.flatMap((b) => decided.get(b.name) ?? []);
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
