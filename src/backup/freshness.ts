import { ShinkeiError } from "../errors.ts";
import { formatDuration } from "../duration.ts";
import { listLocal, type LocalBackup } from "./catalog.ts";

export type Freshness = { newest: LocalBackup | null; ageMs: number | null };

/** The newest backup whose manifest agrees with its file: "good" without reading it whole. */
export async function newestGood(dir: string): Promise<Freshness> {
  const newest = (await listLocal(dir)).find((b) => b.manifest?.sizeBytes === b.sizeBytes) ?? null;
  return { newest, ageMs: newest ? Date.now() - newest.takenAt.getTime() : null };
}

/** For monitors: fail when there is no good backup younger than `maxAgeMs`. */
export async function checkFreshness(dir: string, maxAgeMs: number): Promise<Freshness> {
  const f = await newestGood(dir);
  if (!f.newest) throw new ShinkeiError("BACKUP_STALE", `no good backup in ${dir}`, { hint: "Take one with shinkei backup." });
  if (f.ageMs! > maxAgeMs) {
    throw new ShinkeiError("BACKUP_STALE", `the newest good backup (${f.newest.name}) is ${formatDuration(f.ageMs!)} old, more than ${formatDuration(maxAgeMs)}`, {
      hint: "Check the backup service's log (docker logs shinkei-backup).",
    });
  }
  return f;
}
