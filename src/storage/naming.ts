/**
 * Our backups are `shinkei_backup_YYYYMMDD_HHMMSS[_N].<ext>` (UTC). Retention and listing touch
 * only names that match exactly, so nothing else in the folder or bucket is ever ours to delete.
 */
const PATTERN = new RegExp(
  String.raw`^shinkei_backup_(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})(?:_(\d{1,3}))?` +
    String.raw`\.(sql\.zst\.age|sql\.gz\.age|dump\.gz|dump|sql\.zst|sql\.gz|sql)$`,
);

import type { StoreNaming } from "./store.ts";

export const MANIFEST_SUFFIX = ".manifest.json";
/** zstd since it replaced gzip for dumps; `.sql.gz` and `.sql.gz.age` backups stay ours (listed, restored, pruned). */
export const OUR_EXTENSION = "sql.zst";
export const ENCRYPTED_EXTENSION = "sql.zst.age";

export type BackupName = { name: string; takenAt: Date; extension: string; sequence: number };

/** A name dated more than this ahead of our clock is not a backup we took (a clock that ran ahead, a planted name). */
const CLOCK_SKEW_MS = 5 * 60_000;

/** Not dated ahead of `now`: the only names a default restores, retention places or freshness counts. */
export const notFuture = (b: Pick<BackupName, "takenAt">, now = Date.now()) =>
  b.takenAt.getTime() <= now + CLOCK_SKEW_MS;

export function parseBackupName(name: string): BackupName | null {
  const m = PATTERN.exec(name);
  if (!m) return null;
  const [, y, mo, d, h, mi, s, seq, extension] = m;
  const takenAt = new Date(Date.UTC(+y!, +mo! - 1, +d!, +h!, +mi!, +s!));
  // Date.UTC rolls 30 February, month 13 or minute 60 over into a real moment: no stamp we write.
  if (stamp(takenAt) !== `${y}${mo}${d}_${h}${mi}${s}`) return null;
  return { name, takenAt, extension: extension!, sequence: seq ? Number(seq) : 0 };
}

function stamp(at: Date): string {
  const p = (n: number) => String(n).padStart(2, "0");
  const day = `${at.getUTCFullYear()}${p(at.getUTCMonth() + 1)}${p(at.getUTCDate())}`;
  return `${day}_${p(at.getUTCHours())}${p(at.getUTCMinutes())}${p(at.getUTCSeconds())}`;
}

export function backupName(at: Date, sequence = 0, extension = OUR_EXTENSION): string {
  return `shinkei_backup_${stamp(at)}${sequence ? `_${sequence}` : ""}.${extension}`;
}

/** Newest first; within one second, the higher sequence is newer. */
export function compareNewestFirst(a: BackupName, b: BackupName): number {
  return b.takenAt.getTime() - a.takenAt.getTime() || b.sequence - a.sequence;
}

/** A backup file of ours or its manifest: the only objects listing, mirroring and retention touch. */
export function isOurObject(name: string): boolean {
  return parseBackupName(name.endsWith(MANIFEST_SUFFIX) ? name.slice(0, -MANIFEST_SUFFIX.length) : name) !== null;
}

/** The naming of the backup stores: a backup file goes with its manifest. */
export const backupNaming: StoreNaming = { isOurs: isOurObject, companions: (name) => [name + MANIFEST_SUFFIX] };
