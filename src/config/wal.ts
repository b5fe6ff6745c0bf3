import * as v from "valibot";
import { bool, cron, duration, int, type Values } from "./values.ts";

/** The continuous WAL archive and base backups (point-in-time recovery). */
export const entries = {
  WAL_ARCHIVE: v.pipe(
    v.optional(v.string(), "off"),
    v.trim(),
    v.toLowerCase(),
    v.picklist(["off", "stream"], "must be off or stream"),
  ),
  WAL_SLOT: v.pipe(
    v.optional(v.string(), "shinkei"),
    v.trim(),
    v.regex(/^[a-z0-9_]{1,63}$/, "must be a replication slot name (lower-case letters, digits, _) or none"),
  ),
  WAL_SYNC: bool(true),
  WAL_RECEIVER_NICE: int(10, 0, 19),
  PITR_MAX_LAG: duration("5m", "7d"),
  WAL_PARTIAL_UPLOAD_INTERVAL: duration("60s", "1d"),
  PITR_OFFSITE_MAX_LAG: duration("15m", "30d"),
  BASE_BACKUP_START_FAST: bool(false),
  BASE_BACKUP_SCHEDULE: cron("0 3 * * *", "0 3 * * *"),
  PITR_DRILL_SCHEDULE: cron("0 4 * * 0", "0 4 * * 0"),
};

export type WalConfig = {
  archive: "off" | "stream";
  /** Physical replication slot; undefined streams without one (WAL_SLOT=none). */
  slot?: string;
  synchronous: boolean;
  /**
   * Scheduling priority (nice) of pg_receivewal. It wakes, writes, fsyncs and answers once per
   * commit it is sent: on a host whose CPUs are busy that competes with the server's own backends.
   * At a lower priority it runs in their gaps, taking more WAL per wake-up.
   */
  receiverNice: number;
  maxLagMs: number;
  partialUploadIntervalMs: number;
  /** How far the off-site copy (WAL and base backups) may trail the local archive before `backup check` fails. */
  offsiteMaxLagMs: number;
  baseBackupSchedule: string;
  /** Scheduled base backups ask for an immediate checkpoint instead of a spread one. */
  baseBackupStartFast: boolean;
  /** When the service recovers a scratch instance to a fresh restore point and compares. */
  pitrDrillSchedule: string;
};

export function read(r: Values<typeof entries>): { wal: WalConfig } {
  return {
    wal: {
      archive: r.WAL_ARCHIVE,
      slot: r.WAL_SLOT === "none" ? undefined : r.WAL_SLOT,
      synchronous: r.WAL_SYNC,
      receiverNice: r.WAL_RECEIVER_NICE,
      maxLagMs: r.PITR_MAX_LAG,
      partialUploadIntervalMs: r.WAL_PARTIAL_UPLOAD_INTERVAL,
      offsiteMaxLagMs: r.PITR_OFFSITE_MAX_LAG,
      baseBackupSchedule: r.BASE_BACKUP_SCHEDULE,
      baseBackupStartFast: r.BASE_BACKUP_START_FAST,
      pitrDrillSchedule: r.PITR_DRILL_SCHEDULE,
    },
  };
}
