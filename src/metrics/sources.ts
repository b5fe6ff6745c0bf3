import type { Snapshot } from "./snapshot.ts";

/** What one kind of backup (a dump, a base backup of the WAL archive, ...) reports to the metrics. */
export type KindFacts = {
  kind: string;
  /** How many good backups of this kind are kept locally. */
  count: number;
  newest: { takenAt: Date; sizeBytes: number; durationMs: number | null } | null;
  lastDrill: { at: Date; passed: boolean; durationMs: number } | null;
  lastPassedDrillAt: Date | null;
  maxAgeMs: number;
  drillMaxAgeMs: number;
};

export type Facts = { kinds: KindFacts[]; offsitePending?: { store: string; count: number }[] };

/**
 * A source of backup facts, read at scrape time. Each kind of backup brings its own source, so a
 * new kind is one more entry in the list and nothing else changes.
 */
export type FactSource = { name: string; read(): Promise<Facts> };

/** The pg_dump backups in BACKUP_DIR, as the catalog snapshot sees them. */
export function dumpSource(snapshot: () => Promise<Snapshot>, limits: { maxAgeMs: number; drillMaxAgeMs: number }): FactSource {
  return {
    name: "dump",
    async read() {
      const s = await snapshot();
      const n = s.newestGood;
      const kind: KindFacts = {
        kind: "dump",
        count: s.backups.filter((b) => b.good).length,
        newest: n ? { takenAt: n.takenAt, sizeBytes: n.sizeBytes, durationMs: n.durationMs } : null,
        lastDrill: s.lastDrill ? { at: new Date(s.lastDrill.at), passed: s.lastDrill.passed, durationMs: s.lastDrill.durationMs } : null,
        lastPassedDrillAt: s.lastPassedDrill ? new Date(s.lastPassedDrill.at) : null,
        ...limits,
      };
      return { kinds: [kind], offsitePending: s.offsiteStore === null || s.offsitePending === null ? [] : [{ store: s.offsiteStore, count: s.offsitePending }] };
    },
  };
}
