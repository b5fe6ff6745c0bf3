import type { Sql } from "./db.ts";
import type { RetentionConfig } from "../config/retention.ts";

const secs = (ms: number) => ms / 1000;

/**
 * Delete what the append-only tables hold past its retention (RetentionConfig; 0 keeps for good):
 * account events, sent or abandoned mail, and past backup runs. Unsent mail and unfinished runs
 * are never touched. The server calls this now and then; it returns what went, per table.
 */
export async function pruneHistory(
  sql: Sql,
  keep: Pick<RetentionConfig, "accountEventsMs" | "mailOutboxMs" | "backupRunsMs">,
): Promise<{ accountEvents: number; mailOutbox: number; backupRuns: number }> {
  const accountEvents = keep.accountEventsMs
    ? (
        await sql`delete from account_events
          where created_at < now() - pg_catalog.make_interval(secs => ${secs(keep.accountEventsMs)}::float8)`
      ).count
    : 0;
  const mailOutbox = keep.mailOutboxMs
    ? (
        await sql`delete from mail_outbox where (sent_at is not null or failed_at is not null)
          and created_at < now() - pg_catalog.make_interval(secs => ${secs(keep.mailOutboxMs)}::float8)`
      ).count
    : 0;
  const backupRuns = keep.backupRunsMs
    ? (
        await sql`delete from public.backup_runs where finished_at is not null
          and scheduled_for < now() - pg_catalog.make_interval(secs => ${secs(keep.backupRunsMs)}::float8)`
      ).count
    : 0;
  return { accountEvents, mailOutbox, backupRuns };
}
