import { describeTarget, type Sql } from "../../src/pg/db.ts";
import { mainTables, tableCounts } from "../../src/pg/tables.ts";
import { migrationStatus } from "../../src/migrations/migrate.ts";
import { pendingResetCodes } from "../../src/auth/account-codes.ts";

/** The report `status` prints (and pitr-restore shows before and after): where, which versions, how much is there. */
export type DatabaseState = {
  database: string;
  host: string;
  port: number;
  serverVersion: string;
  schemaVersion: number;
  latestSchemaVersion: number;
  pendingMigrations: number;
  sizeBytes: number;
  counts: Record<string, number | null>;
  /** Unexpired password reset codes: how many, never which (null before the migration that adds them). */
  pendingResetCodes: number | null;
};

export async function databaseState(sql: Sql, url: string): Promise<DatabaseState> {
  const t = describeTarget(url);
  const [info] = await sql<{ size: number; version: string }[]>`
    select pg_database_size(current_database()) as size, current_setting('server_version') as version`;
  const m = await migrationStatus(sql);
  const all = await tableCounts(sql);
  const counts = Object.fromEntries(mainTables.map((name) => [name, all[name] ?? null]));
  return {
    database: t.database,
    host: t.host,
    port: t.port,
    serverVersion: info!.version,
    schemaVersion: m.current,
    latestSchemaVersion: m.latest,
    pendingMigrations: m.pending.length,
    sizeBytes: Number(info!.size),
    counts,
    pendingResetCodes: await pendingResetCodes(sql),
  };
}
