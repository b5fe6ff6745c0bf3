import type { Config } from "../config/index.ts";
import { isSafetyCopy, listLocal, peekManifest } from "./catalog.ts";
import { MANIFEST_SUFFIX, compareNewestFirst, parseBackupName } from "../storage/naming.ts";
import { planRetention, type Candidate, type Decision, type RetentionPolicy } from "./retention.ts";
import { LocalStore } from "../storage/local.ts";
import type { BackupStore } from "../storage/store.ts";
import type { Manifest } from "./manifest.ts";

export type PruneReport = { location: string; decisions: Decision[]; removed: string[] };

/**
 * Retention for BACKUP_DIR: a backup is good when its manifest agrees with the file's size. Each
 * database's backups are kept by the policy on their own (see byDatabase).
 */
export async function pruneLocal(
  config: Config,
  options: { dryRun: boolean; offsite?: BackupStore },
): Promise<PruneReport> {
  const backups = await listLocal(config.backupDir);
  const decisions = byDatabase(
    backups.map((b) => ({
      name: b.name,
      database: b.manifest?.database ?? null,
      server: serverOf(b.manifest),
      // A safety copy (pre-restore, pre-recover) is not what a default restores: it holds no place.
      good: b.manifest?.sizeBytes === b.sizeBytes && !isSafetyCopy(b.manifest),
      mirrored: options.offsite ? Boolean(b.manifest?.offsite?.[options.offsite.kind]) : true,
    })),
    config.backup,
    options.offsite !== undefined,
  );
  return apply(new LocalStore(config.backupDir), decisions, options.dryRun);
}

/**
 * Retention for an off-site store (S3_KEEP_DAYS): only our names under our prefix are listed at all.
 * Each backup's manifest is read (a small object) for the database it names.
 */
export async function pruneStore(
  store: BackupStore,
  keepDays: number,
  policy: RetentionPolicy,
  dryRun: boolean,
): Promise<PruneReport> {
  const objects = await store.list();
  const names = new Set(objects.map((o) => o.name));
  const candidates = [];
  for (const o of objects.filter((o) => !o.name.endsWith(MANIFEST_SUFFIX))) {
    const listed = names.has(o.name + MANIFEST_SUFFIX);
    const manifest = listed ? await peekManifest(store, o.name) : null;
    const database = manifest?.database ?? null;
    const good = listed && !isSafetyCopy(manifest);
    candidates.push({ name: o.name, database, server: serverOf(manifest), good, mirrored: true });
  }
  return apply(store, byDatabase(candidates, { ...policy, keepDays }, false), dryRun);
}

/**
 * The policy applied to each database's backups on its own (by their manifests): in a place that
 * serves two databases, one's daily backups must not take the other's newest, daily, weekly and
 * monthly places. Backups without a manifest are a group of their own.
 */
function byDatabase(
  candidates: (Candidate & { database: string | null; server: string | null })[],
  policy: RetentionPolicy,
  requireMirrored: boolean,
): Decision[] {
  // Two servers' databases of one name (staging and production, say) are two databases too.
  const groups = Map.groupBy(candidates, (c) =>
    c.database === null ? null : JSON.stringify([String(c.database), c.server]),
  );
  const names = [...groups.values()].map((g) => String(g[0]!.database));
  const now = new Date();
  const decided = new Map<string, Decision>();
  for (const [key, group] of groups) {
    const { database, server } = group[0]!;
    // The name from a manifest, quoted: whatever it holds prints as one line of plain text. The
    // server is named only where two groups share the name.
    const shared = names.filter((n) => n === String(database)).length > 1 && server !== null;
    const of =
      groups.size > 1
        ? key === null
          ? " (no manifest)"
          : ` (of ${JSON.stringify(String(database))}${shared ? ` on ${JSON.stringify(server)}` : ""})`
        : "";
    for (const d of planRetention(group, policy, now, requireMirrored)) decided.set(d.name, { ...d, why: d.why + of });
  }
  // Newest first across the groups, as one plan would list them (every name decided on parses).
  return [...decided.values()].sort((a, b) => compareNewestFirst(parseBackupName(a.name)!, parseBackupName(b.name)!));
}

/** Which server a manifest says the backup was taken on (host:port), or null when it does not say. */
function serverOf(m: Manifest | null | undefined): string | null {
  return m && m.host !== undefined && m.host !== null ? `${String(m.host)}:${String(m.port)}` : null;
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
