import { ShinkeiError } from "../errors.ts";
import { formatDuration } from "../duration.ts";
import { belongsTo, isSafetyCopy, listLocal, serverOf, vouchesFor, type LocalBackup, type Owner } from "./catalog.ts";
import { readDrill, type DrillResult } from "./drill.ts";
import { canOpen, type AgeConfig } from "../storage/crypt.ts";
import { notFuture } from "../storage/naming.ts";

export type Freshness = { newest: LocalBackup | null; ageMs: number | null };

/** Whether a backup is of `owner` (its manifest names that database on that server), or any when none is given. */
const ofOwner = (b: LocalBackup, owner?: Owner) => owner === undefined || belongsTo(b.manifest, owner);

/**
 * Whether a backup may stand for how fresh `owner`'s backups are. A backup of another database
 * sharing the folder (or of a database of the same name on another server: staging beside
 * production) says nothing about this one's. Nor does a safety copy: it holds the state a restore
 * or recovery replaced, not the data as it is now (retention and restore's default count neither).
 * With `manifestKey` (BACKUP_MANIFEST_KEY), nor does one whose manifest is not signed for it: a planted
 * file would read as fresh while the real backups have stopped.
 */
export const freshnessCounts = (b: LocalBackup, owner?: Owner, manifestKey?: string): boolean =>
  ofOwner(b, owner) && !isSafetyCopy(b.manifest) && vouchesFor(b.manifest, b.name, manifestKey);

/**
 * The newest backup whose manifest agrees with its file: "good" without reading it whole, of
 * `database` when given, and not a safety copy (freshnessCounts). A name dated ahead of our clock
 * is not one: it would read as fresh for as long as it lies ahead.
 */
export async function newestGood(dir: string, owner?: Owner, manifestKey?: string): Promise<Freshness> {
  const newest =
    (await listLocal(dir)).find(
      (b) => b.manifest?.sizeBytes === b.sizeBytes && freshnessCounts(b, owner, manifestKey) && notFuture(b),
    ) ?? null;
  return { newest, ageMs: newest ? Date.now() - newest.takenAt.getTime() : null };
}

/** The newest passed drill of any local backup (of `owner`, when given). */
export async function newestPassedDrill(dir: string, owner?: Owner): Promise<DrillResult | null> {
  let best: DrillResult | null = null;
  for (const b of await listLocal(dir)) {
    if (!ofOwner(b, owner)) continue;
    const d = await readDrill(b.path);
    if (d?.passed && (!best || d.at > best.at)) best = d;
  }
  return best;
}

/**
 * For monitors: fail when there is no good backup younger than `maxAgeMs`, when the newest backup
 * failed its drill, or when no backup passed a drill within `drillMaxAgeMs`.
 */
export async function checkFreshness(
  dir: string,
  maxAgeMs: number,
  drillMaxAgeMs: number,
  age?: AgeConfig,
  owner?: Owner,
): Promise<Freshness & { drill: DrillResult | null }> {
  const f = await newestGood(dir, owner, age?.manifestKey);
  if (!f.newest)
    throw new ShinkeiError(
      "BACKUP_STALE",
      `no good backup${owner ? ` of ${JSON.stringify(owner.database)} on ${serverOf(owner)}` : ""} in ${dir}`,
      { hint: "Take one with shinkei backup." },
    );
  if (f.ageMs! > maxAgeMs) {
    throw new ShinkeiError(
      "BACKUP_STALE",
      `the newest good backup (${f.newest.name}) is ${formatDuration(f.ageMs!)} old, more ` +
        `than ${formatDuration(maxAgeMs)}`,
      {
        hint: "Check the backup service's log (docker logs shinkei-backup).",
      },
    );
  }
  // A host that holds only public keys cannot drill what it writes: drills belong where the key is.
  if (!canOpen(f.newest.manifest?.encryption, age)) return { ...f, drill: null };
  const own = await readDrill(f.newest.path);
  if (own && !own.passed) {
    throw new ShinkeiError(
      "BACKUP_STALE",
      `the newest backup (${f.newest.name}) failed its restore drill: ${own.differences.join("; ")}`,
      {
        hint: "Take a new backup and drill it: shinkei backup && shinkei backup drill",
      },
    );
  }
  const drill = await newestPassedDrill(dir, owner);
  if (!drill || Date.now() - Date.parse(drill.at) > drillMaxAgeMs) {
    throw new ShinkeiError(
      "BACKUP_STALE",
      drill
        ? `no backup has passed a restore drill for ${formatDuration(Date.now() - Date.parse(drill.at))} ` +
            `(limit ${formatDuration(drillMaxAgeMs)})`
        : "no backup has passed a restore drill yet",
      { hint: "Run one: shinkei backup drill" },
    );
  }
  return { ...f, drill };
}
