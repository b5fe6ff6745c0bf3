import type { Snapshot } from "./snapshot.ts";

export const WINDOW_MS = 30 * 86_400_000;

export type Level = "ok" | "warn" | "bad";
export type EventKind = "backup" | "backup-bad" | "drill-passed" | "drill-failed" | "offsite";
export type TimelineEvent = { at: Date; kind: EventKind; backup: string; text: string };
export type Point = { at: Date; value: number };

export type StatusView = {
  readAt: Date;
  headline: { text: string; level: Level; ageMs: number | null };
  /** Plain sentences, worst first: what an operator should look at. */
  problems: { level: Level; text: string }[];
  newest: { name: string; ageMs: number; sizeBytes: number; durationMs: number | null } | null;
  lastDrill: { backup: string; passed: boolean; ageMs: number; differences: string[] } | null;
  offsitePending: number | null;
  events: TimelineEvent[];
  sizes: Point[];
  durations: Point[];
  window: { start: Date; end: Date };
};

/** "N minutes/hours/days ago": hours up to three days, as an operator counts them at night. */
export function ago(ms: number): string {
  const minutes = Math.max(0, Math.floor(ms / 60_000));
  if (minutes < 1) return "less than a minute ago";
  if (minutes < 60) return minutes === 1 ? "1 minute ago" : `${minutes} minutes ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 72) return hours === 1 ? "1 hour ago" : `${hours} hours ago`;
  return `${Math.floor(hours / 24)} days ago`;
}

/** What the status page and `status --watch` show, from one catalog snapshot and the configured limits. */
export function statusView(s: Snapshot, limits: { maxAgeMs: number; drillMaxAgeMs: number }, now = new Date()): StatusView {
  const t = now.getTime();
  const start = new Date(t - WINDOW_MS);
  const problems: StatusView["problems"] = [];
  const passed = s.lastPassedDrill;
  const passedAge = passed ? t - Date.parse(passed.at) : null;
  const headline = {
    text: passedAge === null ? "Last verified restore: never" : `Last verified restore: ${ago(passedAge)}`,
    level: (passedAge === null || passedAge > limits.drillMaxAgeMs ? "bad" : "ok") as Level,
    ageMs: passedAge,
  };
  const n = s.newestGood;
  if (!n) problems.push({ level: "bad", text: "No good backup in the backup folder." });
  else if (t - n.takenAt.getTime() > limits.maxAgeMs) problems.push({ level: "bad", text: `The newest good backup is from ${ago(t - n.takenAt.getTime())}, older than BACKUP_MAX_AGE.` });
  if (s.lastDrill && !s.lastDrill.passed) problems.push({ level: "bad", text: `The last restore drill (${s.lastDrill.backup}) FAILED: ${s.lastDrill.differences.join("; ") || "see the drill record"}.` });
  if (headline.level === "bad") problems.push({ level: "bad", text: passed ? "No restore drill has passed within BACKUP_DRILL_MAX_AGE." : "No restore drill has passed yet." });
  if (s.offsitePending) problems.push({ level: "warn", text: `${s.offsitePending} backup${s.offsitePending === 1 ? " is" : "s are"} not copied off-site yet.` });

  const inWindow = (d: Date) => d.getTime() >= start.getTime() && d.getTime() <= t + 60_000;
  const events: TimelineEvent[] = [];
  for (const b of s.backups) {
    if (inWindow(b.takenAt)) events.push({ at: b.takenAt, kind: b.good ? "backup" : "backup-bad", backup: b.name, text: b.good ? `backup (${b.reason ?? "?"})` : "backup without a matching manifest" });
    if (b.drill && inWindow(new Date(b.drill.at))) {
      events.push({ at: new Date(b.drill.at), kind: b.drill.passed ? "drill-passed" : "drill-failed", backup: b.name, text: b.drill.passed ? "restore drill passed" : `restore drill FAILED: ${b.drill.differences.join("; ")}` });
    }
    for (const o of b.offsite) {
      const at = new Date(o.copiedAt);
      if (!Number.isNaN(at.getTime()) && inWindow(at)) events.push({ at, kind: "offsite", backup: b.name, text: `copied off-site (${o.kind})` });
    }
  }
  events.sort((a, b) => b.at.getTime() - a.at.getTime());
  const charted = s.backups.filter((b) => b.good && inWindow(b.takenAt)).reverse();
  return {
    readAt: s.readAt,
    headline,
    problems,
    newest: n ? { name: n.name, ageMs: t - n.takenAt.getTime(), sizeBytes: n.sizeBytes, durationMs: n.durationMs } : null,
    lastDrill: s.lastDrill ? { backup: s.lastDrill.backup, passed: s.lastDrill.passed, ageMs: t - Date.parse(s.lastDrill.at), differences: s.lastDrill.differences } : null,
    offsitePending: s.offsitePending,
    events,
    sizes: charted.map((b) => ({ at: b.takenAt, value: b.sizeBytes })),
    durations: charted.flatMap((b) => (b.durationMs === null ? [] : [{ at: b.takenAt, value: b.durationMs }])),
    window: { start, end: now },
  };
}
