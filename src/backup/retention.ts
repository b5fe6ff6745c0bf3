import { compareNewestFirst, notFuture, parseBackupName } from "../storage/naming.ts";

export type RetentionPolicy = { keepDays: number; keepDaily: number; keepWeekly: number; keepMonthly: number };
/** `takenAt` for names that carry no backup timestamp of the dump kind (base backups give theirs). */
export type Candidate = { name: string; good: boolean; mirrored: boolean; takenAt?: Date };
export type Decision = { name: string; keep: boolean; why: string };

const DAY = 86_400_000;
const dayKey = (d: Date) => d.toISOString().slice(0, 10);
const monthKey = (d: Date) => d.toISOString().slice(0, 7);
function weekKey(d: Date): string {
  // ISO week: the Thursday of this week decides the year.
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  t.setUTCDate(t.getUTCDate() + 3 - ((t.getUTCDay() + 6) % 7));
  const week1 = new Date(Date.UTC(t.getUTCFullYear(), 0, 4));
  const week = 1 + Math.round(((t.getTime() - week1.getTime()) / DAY - 3 + ((week1.getUTCDay() + 6) % 7)) / 7);
  return `${t.getUTCFullYear()}-W${week}`;
}

/**
 * Decide, for each of our backups, whether it stays and why. Never removed: the newest good
 * backup, anything inside KEEP_DAYS, the newest good one of each kept day/week/month, and (when
 * off-site copies are on) anything not yet copied. Names that are not ours never get here.
 */
export function planRetention(
  candidates: Candidate[],
  policy: RetentionPolicy,
  now: Date,
  requireMirrored: boolean,
): Decision[] {
  const parsed = candidates
    .map((c) => ({
      ...c,
      parsed: c.takenAt ? { name: c.name, takenAt: c.takenAt, extension: "", sequence: 0 } : parseBackupName(c.name),
    }))
    .filter((c): c is Candidate & { parsed: NonNullable<ReturnType<typeof parseBackupName>> } => c.parsed !== null)
    .sort((a, b) => compareNewestFirst(a.parsed, b.parsed));

  // A backup dated in the future (a clock that ran ahead, a planted name) holds no place: it would
  // let the real newest one go, and no default restores it. It is kept while it is "young" anyway.
  const placed = (c: (typeof parsed)[number]) => c.good && notFuture(c.parsed, now.getTime());
  const kept = new Map<string, string>();
  const newestGood = parsed.find(placed);
  if (newestGood) kept.set(newestGood.name, "newest good backup");
  for (const [count, key, label] of [
    [policy.keepDaily, dayKey, "daily"],
    [policy.keepWeekly, weekKey, "weekly"],
    [policy.keepMonthly, monthKey, "monthly"],
  ] as const) {
    const seen = new Set<string>();
    for (const c of parsed) {
      if (!placed(c) || seen.size >= count) continue;
      const k = key(c.parsed.takenAt);
      if (seen.has(k)) continue;
      seen.add(k);
      if (!kept.has(c.name)) kept.set(c.name, `${label} keep (${k})`);
    }
  }

  return parsed.map((c) => {
    const why = kept.get(c.name);
    if (why) return { name: c.name, keep: true, why };
    if (requireMirrored && !c.mirrored) return { name: c.name, keep: true, why: "not yet copied off-site" };
    const ageDays = (now.getTime() - c.parsed.takenAt.getTime()) / DAY;
    if (ageDays <= policy.keepDays) return { name: c.name, keep: true, why: `within ${policy.keepDays} days` };
    return { name: c.name, keep: false, why: `older than ${policy.keepDays} days` };
  });
}
