import type { Snapshot } from "./snapshot.ts";
import type { Config } from "../config/index.ts";
import type { Sql } from "../pg/db.ts";
import type { ArchiveTrust } from "../wal/trust.ts";
import { listBaseBackups } from "../wal/base.ts";
import { archiveWindow, newestHeld, offsiteCoverage, pitrStatus } from "../wal/status.ts";
import { readPitrDrills } from "../pitr/drill.ts";

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

/** The point-in-time window the WAL archive in BACKUP_DIR covers, from the files alone. */
export type WindowFacts = {
  start: Date | null;
  end: Date | null;
  gaps: number;
  gapsAfterNewestBase: number;
  maxLagMs: number;
  unsealed: number;
  unsealedSince: Date | null;
  untrusted: number;
  spoolFreeBytes: number | null;
  diskFull: boolean;
  refusedPartials: number;
};

/** How far the WAL receiver trails the server, and its replication slot: what the database says. */
export type ReceiverFacts = {
  connected: boolean;
  lagBytes: number;
  /** 0 when nothing is missing; +Infinity when behind and nothing was ever received. */
  lagSeconds: number;
  slot: { name: string; active: boolean; walStatus: string | null; safeWalSize: number | null } | null;
};

/** How far the off-site copy trails what is held locally, per kind (wal, base), in seconds; 0 when nothing waits. */
export type OffsiteLagFacts = { kind: string; lagSeconds: number; maxLagMs: number }[];

export type Facts = {
  kinds: KindFacts[];
  offsitePending?: { store: string; count: number }[];
  offsiteLag?: OffsiteLagFacts;
  window?: WindowFacts;
  receiver?: ReceiverFacts;
};

/**
 * A source of backup facts, read at scrape time. Each kind of backup brings its own source, so a
 * new kind is one more entry in the list and nothing else changes.
 */
export type FactSource = { name: string; read(): Promise<Facts> };

/** The pg_dump backups in BACKUP_DIR, as the catalog snapshot sees them. */
export function dumpSource(
  snapshot: () => Promise<Snapshot>,
  limits: { maxAgeMs: number; drillMaxAgeMs: number },
): FactSource {
  return {
    name: "dump",
    async read() {
      const s = await snapshot();
      const n = s.newestGood;
      const kind: KindFacts = {
        kind: "dump",
        count: s.backups.filter((b) => b.good).length,
        newest: n ? { takenAt: n.takenAt, sizeBytes: n.sizeBytes, durationMs: n.durationMs } : null,
        lastDrill: s.lastDrill
          ? { at: new Date(s.lastDrill.at), passed: s.lastDrill.passed, durationMs: s.lastDrill.durationMs }
          : null,
        lastPassedDrillAt: s.lastPassedDrill ? new Date(s.lastPassedDrill.at) : null,
        ...limits,
      };
      return {
        kinds: [kind],
        offsitePending:
          s.offsiteStore === null || s.offsitePending === null
            ? []
            : [{ store: s.offsiteStore, count: s.offsitePending }],
      };
    },
  };
}

/**
 * Base backups of the WAL archive (kind "base", their drills the point-in-time drills) and the
 * window they and the archived WAL recover to. Read from BACKUP_DIR alone, like the dumps: a scrape
 * never waits on the database. The receiver's lag and the slot come from receiverSource.
 */
export function archiveSource(
  backupDir: string,
  trust: ArchiveTrust,
  limits: { maxAgeMs: number; drillMaxAgeMs: number },
  maxLagMs: number,
  offsite?: { config: Config },
): FactSource {
  return {
    name: "wal",
    async read() {
      const [drills, w] = await Promise.all([readPitrDrills(backupDir), archiveWindow(backupDir, trust)]);
      const bases = w.bases;
      const newest = bases.at(-1)?.manifest;
      const last = drills.at(-1);
      const passed = drills.filter((d) => d.passed).at(-1);
      const kind: KindFacts = {
        kind: "base",
        count: bases.length,
        newest: newest
          ? {
              takenAt: new Date(newest.finishedAt),
              sizeBytes: newest.sizeBytes,
              durationMs: Date.parse(newest.finishedAt) - Date.parse(newest.startedAt),
            }
          : null,
        lastDrill: last ? { at: new Date(last.at), passed: last.passed, durationMs: last.durationMs } : null,
        lastPassedDrillAt: passed ? new Date(passed.at) : null,
        ...limits,
      };
      const date = (s: string | null) => (s ? new Date(s) : null);
      const o = offsite && (await offsiteCoverage(offsite.config, w.records, newestHeld(w), bases));
      const maxLag = offsite?.config.wal.offsiteMaxLagMs ?? 0;
      return {
        offsiteLag: o
          ? [
              { kind: "wal", lagSeconds: o.lagSeconds, maxLagMs: maxLag },
              { kind: "base", lagSeconds: o.baseLagSeconds, maxLagMs: maxLag },
            ]
          : [],
        kinds: bases.length || drills.length ? [kind] : [],
        window: {
          start: date(w.window.earliest),
          end: date(w.window.latest),
          gaps: w.gaps.length,
          gapsAfterNewestBase: w.gapsAfterNewestBase.length,
          maxLagMs,
          unsealed: w.unsealed.segments,
          unsealedSince: date(w.unsealed.oldestReceivedAt),
          untrusted: w.untrusted.length,
          spoolFreeBytes: w.spool.freeBytes,
          diskFull: w.spool.diskFull,
          refusedPartials: w.spool.refused.length,
        },
      };
    },
  };
}

/**
 * The receiver's lag and the slot, as `pitr status` reads them from the database. The lag is the
 * server's own measure: it stays 0 while the app is idle, where the window's age keeps growing.
 * Its statements give up after 3 s on the server, and the scrape stops waiting after 4 s whatever
 * happens (the source then shows as down, the other figures still come).
 */
export function receiverSource(config: Config, sql: Sql): FactSource {
  return {
    name: "receiver",
    async read() {
      const s = await sql.begin(async (tx) => {
        await tx`set local statement_timeout = 3000`;
        return pitrStatus(tx, config);
      });
      const slot = s.slot && {
        name: s.slot.name,
        active: s.slot.active,
        walStatus: s.slot.walStatus,
        safeWalSize: s.slot.safeWalSize,
      };
      return {
        kinds: [],
        receiver: {
          connected: s.receiver.connected,
          lagBytes: s.receiver.lagBytes,
          lagSeconds: s.receiver.lagSeconds < 0 ? Infinity : s.receiver.lagSeconds,
          slot,
        },
      };
    },
  };
}
