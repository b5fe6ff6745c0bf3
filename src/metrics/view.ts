import type { PitrSnapshot, Snapshot } from "./snapshot.ts";
import { formatDuration } from "../duration.ts";
import { describeUntrusted } from "../wal/trust.ts";

export const WINDOW_MS = 30 * 86_400_000;

export type Level = "ok" | "warn" | "bad";
export type EventKind = "backup" | "backup-bad" | "base" | "drill-passed" | "drill-failed" | "offsite" | "wal-gap";
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
  /** With the WAL archive on: what point-in-time recovery can reach, and its proof. */
  pitr: PitrView | null;
};

export type PitrView = {
  /** The recoverable window, clipped to the page's 30 days for drawing; the facts show it whole. */
  window: { earliest: Date; latest: Date } | null;
  newestWalAgeMs: number | null;
  gaps: number;
  gapsAfterNewestBase: number;
  newestBase: { name: string; ageMs: number; sizeBytes: number; durationMs: number } | null;
  lastDrill: { passed: boolean; ageMs: number; rtoMs: number | null; differences: string[] } | null;
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
export function statusView(
  s: Snapshot,
  limits: { maxAgeMs: number; drillMaxAgeMs: number },
  now = new Date(),
  pitr: PitrSnapshot | null = null,
): StatusView {
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
  else if (t - n.takenAt.getTime() > limits.maxAgeMs)
    problems.push({
      level: "bad",
      text: `The newest good backup is from ${ago(t - n.takenAt.getTime())}, older than BACKUP_MAX_AGE.`,
    });
  if (s.lastDrill && !s.lastDrill.passed)
    problems.push({
      level: "bad",
      text:
        `The last restore drill (${s.lastDrill.backup}) ` +
        `FAILED: ${s.lastDrill.differences.join("; ") || "see the drill record"}.`,
    });
  if (headline.level === "bad")
    problems.push({
      level: "bad",
      text: passed ? "No restore drill has passed within BACKUP_DRILL_MAX_AGE." : "No restore drill has passed yet.",
    });
  if (s.offsitePending)
    problems.push({
      level: "warn",
      text: `${s.offsitePending} backup${s.offsitePending === 1 ? " is" : "s are"} not copied off-site yet.`,
    });

  const inWindow = (d: Date) => d.getTime() >= start.getTime() && d.getTime() <= t + 60_000;
  const events: TimelineEvent[] = [];
  for (const b of s.backups) {
    if (inWindow(b.takenAt))
      events.push({
        at: b.takenAt,
        kind: b.good ? "backup" : "backup-bad",
        backup: b.name,
        text: b.good ? `backup (${b.reason ?? "?"})` : "backup without a matching manifest",
      });
    if (b.drill && inWindow(new Date(b.drill.at))) {
      events.push({
        at: new Date(b.drill.at),
        kind: b.drill.passed ? "drill-passed" : "drill-failed",
        backup: b.name,
        text: b.drill.passed ? "restore drill passed" : `restore drill FAILED: ${b.drill.differences.join("; ")}`,
      });
    }
    for (const o of b.offsite) {
      const at = new Date(o.copiedAt);
      if (!Number.isNaN(at.getTime()) && inWindow(at))
        events.push({ at, kind: "offsite", backup: b.name, text: `copied off-site (${o.kind})` });
    }
  }
  if (pitr) pitrFacts(pitr, t, limits, problems, events, inWindow);
  events.sort((a, b) => b.at.getTime() - a.at.getTime());
  const charted = s.backups.filter((b) => b.good && inWindow(b.takenAt)).reverse();
  return {
    readAt: s.readAt,
    headline,
    problems,
    newest: n
      ? { name: n.name, ageMs: t - n.takenAt.getTime(), sizeBytes: n.sizeBytes, durationMs: n.durationMs }
      : null,
    lastDrill: s.lastDrill
      ? {
          backup: s.lastDrill.backup,
          passed: s.lastDrill.passed,
          ageMs: t - Date.parse(s.lastDrill.at),
          differences: s.lastDrill.differences,
        }
      : null,
    offsitePending: s.offsitePending,
    events,
    sizes: charted.map((b) => ({ at: b.takenAt, value: b.sizeBytes })),
    durations: charted.flatMap((b) => (b.durationMs === null ? [] : [{ at: b.takenAt, value: b.durationMs }])),
    window: { start, end: now },
    pitr: pitr && {
      window: pitr.window,
      newestWalAgeMs: pitr.newestWalAt && t - pitr.newestWalAt.getTime(),
      gaps: pitr.gaps.length,
      gapsAfterNewestBase: pitr.gapsAfterNewestBase,
      newestBase: newestBase(pitr, t),
      lastDrill: lastPitrDrill(pitr, t),
    },
  };
}

function newestBase(p: PitrSnapshot, t: number): PitrView["newestBase"] {
  const b = p.bases.at(-1);
  return b ? { name: b.name, ageMs: t - b.takenAt.getTime(), sizeBytes: b.sizeBytes, durationMs: b.durationMs } : null;
}

function lastPitrDrill(p: PitrSnapshot, t: number): PitrView["lastDrill"] {
  const d = p.drills.at(-1);
  return d ? { passed: d.passed, ageMs: t - Date.parse(d.at), rtoMs: d.rtoMs, differences: d.differences } : null;
}

/** The WAL archive's problems and events: base backups, point-in-time drills, gaps. */
function pitrFacts(
  p: PitrSnapshot,
  t: number,
  limits: { drillMaxAgeMs: number },
  problems: StatusView["problems"],
  events: TimelineEvent[],
  inWindow: (d: Date) => boolean,
) {
  if (p.bases.length === 0)
    problems.push({
      level: "bad",
      text: "No base backup yet: the WAL archive has nothing to replay onto (shinkei backup base).",
    });
  for (const line of describeUntrusted(p.untrusted))
    problems.push({ level: "bad", text: `Left out of the point-in-time window: ${line}.` });
  if (p.gapsAfterNewestBase)
    problems.push({
      level: "bad",
      text:
        `${p.gapsAfterNewestBase} gap${p.gapsAfterNewestBase === 1 ? "" : "s"} in the WAL after the newest ` +
        `base backup: recovery stops at the first. Take a base backup now.`,
    });
  const last = p.drills.at(-1);
  const passed = p.drills.filter((d) => d.passed).at(-1);
  if (last && !last.passed)
    problems.push({
      level: "bad",
      text: `The last point-in-time drill FAILED: ${last.differences.join("; ") || "see shinkei pitr status"}.`,
    });
  if (!passed || t - Date.parse(passed.at) > limits.drillMaxAgeMs) {
    problems.push({
      level: "warn",
      text: passed
        ? "No point-in-time drill has passed within BACKUP_DRILL_MAX_AGE."
        : "No point-in-time drill has passed yet (shinkei pitr drill).",
    });
  }
  for (const b of p.bases) {
    if (inWindow(b.takenAt))
      events.push({
        at: b.takenAt,
        kind: "base",
        backup: b.name,
        text: b.walComplete ? "base backup" : "base backup (its WAL is not all in the archive)",
      });
  }
  for (const d of p.drills) {
    const at = new Date(d.at);
    if (Number.isNaN(at.getTime()) || !inWindow(at)) continue;
    const text = d.passed
      ? `point-in-time drill passed${d.rtoMs === null ? "" : ` (recovered in ${formatDuration(d.rtoMs)})`}`
      : `point-in-time drill FAILED: ${d.differences.join("; ")}`;
    events.push({ at, kind: d.passed ? "drill-passed" : "drill-failed", backup: d.base ?? "WAL archive", text });
  }
  for (const g of p.gaps) {
    if (g.at && inWindow(g.at))
      events.push({
        at: g.at,
        kind: "wal-gap",
        backup: g.from === g.to ? g.from : `${g.from} .. ${g.to}`,
        text: `WAL gap: ${g.segments} segment${g.segments === 1 ? "" : "s"} missing`,
      });
  }
}
