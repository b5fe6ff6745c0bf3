import { duration, type Values } from "./values.ts";

/** How long what only grows is kept (rows of some tables, recovery records); 0 keeps it for good. */
export const entries = {
  ACCOUNT_EVENTS_KEEP: duration("365d", "3650d", { zero: true }),
  MAIL_OUTBOX_KEEP: duration("7d", "365d", { zero: true }),
  BACKUP_RUNS_KEEP: duration("90d", "3650d", { zero: true }),
  RECOVER_RECORD_KEEP: duration("90d", "3650d", { zero: true }),
};

export type RetentionConfig = {
  /** account_events: resets and verifications, for the person who runs the server. */
  accountEventsMs: number;
  /** mail_outbox rows sent or abandoned (their bodies are gone already; unsent mail is never pruned). */
  mailOutboxMs: number;
  /** backup_runs: one row per scheduled backup time, claimed by the service that took it. */
  backupRunsMs: number;
  /**
   * Recovery records and their safety copies (BACKUP_DIR and off-site), by the time the recovery
   * was applied: `shinkei backup prune` and the backup service remove older ones, and only those.
   */
  recoverRecordsMs: number;
};

export function read(r: Values<typeof entries>): { retention: RetentionConfig } {
  return {
    retention: {
      accountEventsMs: r.ACCOUNT_EVENTS_KEEP,
      mailOutboxMs: r.MAIL_OUTBOX_KEEP,
      backupRunsMs: r.BACKUP_RUNS_KEEP,
      recoverRecordsMs: r.RECOVER_RECORD_KEEP,
    },
  };
}
