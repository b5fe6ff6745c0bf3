import type { Sql } from "../../src/pg/db.ts";
import type { Log } from "../../src/log.ts";
import { RECEIVER_APP_NAME } from "../../src/wal/receiver.ts";
import { until } from "./wait.ts";
import { Service } from "./process.ts";

export type LogLine = Record<string, unknown>;

/** A log that keeps its lines, for a test to read what the code under test logged. */
export function collector(): { log: Log; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { lines, log: (l) => void lines.push(l) };
}

/**
 * A WAL receiver has flushed everything up to `lsn` (the server's own view of it, on `sql`'s
 * server). Any of them: a receiver that restarts may briefly be listed twice.
 */
export const receiverFlushed = (sql: Sql, lsn: string) =>
  until(`the receiver to flush ${lsn}`, async () => {
    const rows = await sql`
      select 1 from pg_stat_replication where application_name = ${RECEIVER_APP_NAME} and flush_lsn >= ${lsn}::pg_lsn`;
    return rows.length > 0;
  });

/** A WAL receiver streams from `sql`'s server. */
export const receiverStreaming = (sql: Sql, what = "the receiver to stream") =>
  until(what, async () => {
    const rows = await sql`
      select 1 from pg_stat_replication where application_name = ${RECEIVER_APP_NAME} and state = 'streaming'`;
    return rows.length === 1;
  });

/**
 * The environment of a host that streams WAL into `dir`, plus `extra`: its backup schedules are far
 * from now, so that only what a test starts runs.
 */
export function streamingEnv(
  databaseUrl: string,
  dir: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    BACKUP_DIR: dir,
    WAL_ARCHIVE: "stream",
    BACKUP_SCHEDULE: "0 0 1 1 *",
    BASE_BACKUP_SCHEDULE: "0 0 1 1 *",
    ...extra,
  };
}

/** The backup service, once its WAL receiver runs. */
export async function startBackupService(env: Record<string, string>): Promise<Service> {
  const service = await Service.start(["backup-service"], env);
  await service.waitFor((l) => l.msg === "wal receiver started", 30_000);
  return service;
}
