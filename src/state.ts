import type { Queryable, Sql } from "./db.ts";
import { describeTarget } from "./db.ts";
import { migrationStatus } from "./migrations/migrate.ts";
import { pendingResetCodes } from "./auth/account-codes.ts";

/** The tables a person checks first when asking "is my data still there?". */
export const mainTables = ["users", "worlds", "stories", "story_beats", "sessions"] as const;

/** Every ordinary (or partitioned) table in `public`, by name. */
export async function publicTables(sql: Queryable): Promise<{ name: string }[]> {
  return sql<{ name: string }[]>`
    select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relkind in ('r', 'p') order by c.relname`;
}

/** Exact row counts of every ordinary table in `public`, read in one statement (one snapshot). */
export async function tableCounts(sql: Queryable): Promise<Record<string, number>> {
  const tables = await publicTables(sql);
  if (tables.length === 0) return {};
  const parts = tables.map((t) => `select ${quoteLiteral(t.name)} as name, count(*)::int8 as n from public.${quoteIdent(t.name)}`);
  const rows = await sql.unsafe<{ name: string; n: number }[]>(parts.join(" union all "));
  return Object.fromEntries(rows.map((r) => [r.name, Number(r.n)]));
}

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

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

export function quoteLiteral(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}
