import { duration, type Values } from "./values.ts";

/** How long the tables that only grow keep their rows; 0 keeps them for good. */
export const entries = {
  ACCOUNT_EVENTS_KEEP: duration("365d", "3650d", { zero: true }),
  MAIL_OUTBOX_KEEP: duration("7d", "365d", { zero: true }),
  BACKUP_RUNS_KEEP: duration("90d", "3650d", { zero: true }),
};

export type RetentionConfig = {
  /** account_events: resets and verifications, for the person who runs the server. */
  accountEventsMs: number;
  /** mail_outbox rows sent or abandoned (their bodies are gone already; unsent mail is never pruned). */
  mailOutboxMs: number;
  /** backup_runs: one row per scheduled backup time, claimed by the service that took it. */
  backupRunsMs: number;
};

export function read(r: Values<typeof entries>): { retention: RetentionConfig } {
  return {
    retention: {
      accountEventsMs: r.ACCOUNT_EVENTS_KEEP,
      mailOutboxMs: r.MAIL_OUTBOX_KEEP,
      backupRunsMs: r.BACKUP_RUNS_KEEP,
    },
  };
}
