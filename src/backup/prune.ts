import type { Config } from "../config/index.ts";
import { describeTarget } from "../pg/db.ts";
import { belongsTo, isSafetyCopy, listLocal, peekManifest, serverOf, vouchesFor, type Owner } from "./catalog.ts";
import { MANIFEST_SUFFIX, compareNewestFirst, parseBackupName } from "../storage/naming.ts";
import { planRetention, type Candidate, type Decision, type RetentionPolicy } from "./retention.ts";
import { LocalStore } from "../storage/local.ts";
import type { BackupStore } from "../storage/store.ts";
import { copiedTo } from "../storage/mirror.ts";
import type { Manifest } from "./manifest.ts";

/**
 * What a run left alone, undecided: `others` of `groups` other databases (or of this database's
 * name on other servers), theirs to prune; and `unowned`, ones that do not say whose they are (no
 * readable manifest), in a place shared with such others.
 */
export type LeftAlone = { others: number; groups: number; unowned: number; unsigned?: number };

export type PruneReport = { location: string; decisions: Decision[]; removed: string[]; leftAlone: LeftAlone };

/**
 * Retention for BACKUP_DIR: a backup is good when its manifest agrees with the file's size (and,
 * with BACKUP_MANIFEST_KEY, is signed for it: a planted "newest" must not make the real ones look
 * old enough to delete). Only this database's backups on this server are decided on (see ownOnly).
 */
export async function pruneLocal(
  config: Config,
  options: { dryRun: boolean; offsite?: BackupStore },
): Promise<PruneReport> {
  const backups = await listLocal(config.backupDir);
  const { decisions, leftAlone } = ownOnly(
    backups.map((b) => ({
      name: b.name,
      manifest: b.manifest,
      // A safety copy (pre-restore, pre-recover) is not what a default restores: it holds no place.
      good:
        b.manifest?.sizeBytes === b.sizeBytes &&
        !isSafetyCopy(b.manifest) &&
        vouchesFor(b.manifest, b.name, config.backup.age?.manifestKey),
      mirrored: options.offsite ? b.manifest !== null && copiedTo(b.manifest, options.offsite) : true,
    })),
    describeTarget(config.databaseUrl),
    config.backup,
    options.offsite !== undefined,
    config.backup.age?.manifestKey,
  );
  return apply(new LocalStore(config.backupDir), decisions, leftAlone, options.dryRun);
}

/**
 * Retention for an off-site store (S3_KEEP_DAYS): only our names under our prefix are listed at all.
 * Each backup's manifest is read (a small object) for the database and server it names; only
 * `owner`'s are decided on, as locally: a shared prefix's other services keep to their own S3_KEEP_DAYS.
 * With `manifestKey` (BACKUP_MANIFEST_KEY), only a backup whose manifest is signed for it is good.
 */
export async function pruneStore(
  store: BackupStore,
  keepDays: number,
  policy: RetentionPolicy,
  dryRun: boolean,
  owner: Owner,
  manifestKey?: string,
): Promise<PruneReport> {
  const objects = await store.list();
  const names = new Set(objects.map((o) => o.name));
  const candidates = [];
  for (const o of objects.filter((o) => !o.name.endsWith(MANIFEST_SUFFIX))) {
    const listed = names.has(o.name + MANIFEST_SUFFIX);
    const manifest = listed ? await peekManifest(store, o.name) : null;
    const good = listed && !isSafetyCopy(manifest) && vouchesFor(manifest, o.name, manifestKey);
    candidates.push({ name: o.name, manifest, good, mirrored: true });
  }
  const { decisions, leftAlone } = ownOnly(candidates, owner, { ...policy, keepDays }, false, manifestKey);
  return apply(store, decisions, leftAlone, dryRun);
}

/**
 * The policy applied to `owner`'s backups alone (by their manifests' database and host:port). Two
 * services sharing a folder or bucket prefix each prune their own: one's policy (no off-site copies,
 * fewer days) must not delete what the other's keeps, such as a backup it has not yet copied
 * off-site, and one's daily backups must not take the other's newest, daily, weekly and monthly
 * places. A backup without a manifest says nothing of whose it is: decided as before (it holds no
 * place, and goes by age) where every backup with a manifest is the owner's, and left alone where
 * another's are present (its manifest lost, or still being copied off-site by that service).
 */
function ownOnly(
  candidates: (Candidate & { manifest: Manifest | null })[],
  owner: Owner,
  policy: RetentionPolicy,
  requireMirrored: boolean,
  manifestKey: string | undefined,
): { decisions: Decision[]; leftAlone: LeftAlone } {
  const unnamed = (m: Manifest | null) => m === null || typeof m !== "object" || m.database == null;
  // With BACKUP_MANIFEST_KEY, a manifest not signed for its backup is never decided on: taken before
  // the key was set (deleting them by age would take the monthly history with them), or planted.
  // Either way it holds no place, so it cannot cost a signed backup its own.
  // One naming another database (its service may sign with another key, or none) is that one's.
  const named = candidates.filter((c) => !unnamed(c.manifest));
  const others = named.filter((c) => !belongsTo(c.manifest, owner));
  const unsigned = named.filter((c) => belongsTo(c.manifest, owner) && !vouchesFor(c.manifest, c.name, manifestKey));
  const mine = named.filter((c) => belongsTo(c.manifest, owner) && vouchesFor(c.manifest, c.name, manifestKey));
  const without = candidates.filter((c) => unnamed(c.manifest));
  const now = new Date();
  const decisions = planRetention(mine, policy, now, requireMirrored);
  if (others.length === 0)
    for (const d of planRetention(without, policy, now, requireMirrored))
      decisions.push({ ...d, why: `${d.why} (no manifest)` });
  const groups = new Set(others.map((c) => JSON.stringify([String(c.manifest!.database), serverOf(c.manifest)])));
  return {
    // Newest first, as one plan would list them (every name decided on parses).
    decisions: decisions.sort((a, b) => compareNewestFirst(parseBackupName(a.name)!, parseBackupName(b.name)!)),
    leftAlone: {
      others: others.length,
      groups: groups.size,
      unowned: others.length ? without.length : 0,
      unsigned: unsigned.length,
    },
  };
}

/** How leftAloneText names what it counts: backups (the default), or recovery records. */
export const BACKUPS = { items: "backup(s)", unowned: "without a manifest" };
export const RECORDS = { items: "recovery record(s)", unowned: "recoveries without a readable record" };

/** What a run left alone, in one line for people; null when it left nothing. */
export function leftAloneText(left: LeftAlone, what = BACKUPS): string | null {
  const parts = [];
  if (left.others)
    parts.push(
      `${left.others} ${what.items} of ${left.groups} other database(s) or server(s) ` +
        "left to their own service's retention",
    );
  if (left.unowned) parts.push(`${left.unowned} ${what.unowned} left alone (they may be another database's)`);
  if (left.unsigned)
    parts.push(
      `${left.unsigned} ${what.items} whose manifest is not signed for them left alone (taken before ` +
        "BACKUP_MANIFEST_KEY was set, or not ours): delete them by hand once no longer needed",
    );
  return parts.length ? parts.join("; ") : null;
}

async function apply(
  store: BackupStore,
  decisions: Decision[],
  leftAlone: LeftAlone,
  dryRun: boolean,
): Promise<PruneReport> {
  const removed: string[] = [];
  if (!dryRun) {
    for (const d of decisions.filter((d) => !d.keep)) {
      await store.remove(d.name);
      removed.push(d.name);
    }
  }
  return { location: store.location, decisions, removed, leftAlone };
}
