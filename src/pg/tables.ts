import type { Queryable } from "./db.ts";
import { ShinkeiError } from "../errors.ts";

/** The tables a person checks first when asking "is my data still there?". */
export const mainTables = ["users", "worlds", "stories", "story_beats", "sessions"] as const;

/*
 * Catalog queries run as whoever runs shinkei, often a superuser, in a database whose schemas the
 * app's role (or a restored file) may have filled. PostgreSQL picks an operator or function by the
 * best match of argument types across the search path: `name !~ unknown` finds no exact
 * `!~(name, name)` in pg_catalog, so one in public runs instead, as the caller. So every
 * comparison here has the exact types of one of pg_catalog's (`::text`, `::oid`: a regclass
 * compared with an oid column matches none exactly), and pg_catalog's come first.
 */

/** SQL: the schema `n` (a pg_namespace alias) is one of the database's own, not a system one. */
export const ownSchema = (n: string) =>
  `${n}.nspname <> 'information_schema' and not pg_catalog.starts_with(${n}.nspname::text, 'pg_')`;

/**
 * Every ordinary (or partitioned) table the database's own schemas hold, and what a restore brings
 * back: tables of extensions (whose data pg_dump leaves to the extension) and system schemas are
 * left out. `key` is the table's name in `public` and `schema.name` elsewhere, so manifests of
 * backups taken before other schemas counted still compare.
 */
export async function userTables(sql: Queryable): Promise<{ key: string; qualified: string }[]> {
  const rows = await sql<{ schema: string; name: string }[]>`
    select n.nspname as schema, c.relname as name from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p') and ${sql.unsafe(ownSchema("n"))}
      and not exists (select 1 from pg_catalog.pg_depend d where d.classid = 'pg_catalog.pg_class'::regclass::oid
        and d.objid = c.oid and d.deptype = 'e')
    order by n.nspname <> 'public', n.nspname, c.relname`;
  return rows.map((r) => ({
    key: r.schema === "public" ? r.name : `${r.schema}.${r.name}`,
    qualified: `${quoteIdent(r.schema)}.${quoteIdent(r.name)}`,
  }));
}

/**
 * Whether `qualified` (e.g. public.schema_migrations) is there, for a query shinkei runs over it,
 * often as a superuser: only an ordinary table. A view (or anything else) of that name runs the
 * functions in its definition as whoever reads it: NOT_A_TABLE, and it is not read. Columns read
 * from it are cast to their base types and aggregates and operators are pg_catalog's, so a domain
 * the app defined brings none of its own operators (see the comment at the top).
 */
export async function plainTable(sql: Queryable, qualified: string): Promise<boolean> {
  const [row] = await sql<{ kind: string | null }[]>`
    select c.relkind::text as kind from pg_catalog.pg_class c
     where c.oid = pg_catalog.to_regclass(${qualified}::text)::oid`;
  if (!row) return false;
  if (row.kind !== "r")
    throw new ShinkeiError("NOT_A_TABLE", `${qualified} is not a table (relkind ${row.kind}): it was not read`, {
      hint: "shinkei made it a table; something replaced it. Look at it as its owner before running shinkei again.",
    });
  return true;
}

/** Large objects live outside any table; they are counted under this key beside the tables. */
export const LARGE_OBJECTS = "(large objects)";

/**
 * The one place tables are counted: every table's exact row count (and, given `digest`, its
 * per-row expression summed), plus the number of large objects, in one statement (one snapshot).
 * Large objects count only when there are any, so databases without them compare as before.
 */
export async function countRows(
  sql: Queryable,
  digest?: (row: string) => string,
): Promise<{ name: string; n: number; digest: string | null }[]> {
  const parts = (await userTables(sql)).map(
    (t) =>
      `select ${quoteLiteral(t.key)} as name, count(*)::int8 as n, ${digest ? digest("r") : "null::text"} ` +
      `as digest from ${t.qualified} r`,
  );
  // Large objects are counted, never digested: reading their content needs privileges on each one.
  // Named: with no user table this part comes first, and a union takes its column names from the first.
  parts.push(
    `select ${quoteLiteral(LARGE_OBJECTS)} as name, count(*)::int8 as n, null::text as digest ` +
      "from pg_catalog.pg_largeobject_metadata",
  );
  const rows = await sql.unsafe<{ name: string; n: number; digest: string | null }[]>(parts.join(" union all "));
  return rows.filter((r) => r.name !== LARGE_OBJECTS || Number(r.n) > 0).map((r) => ({ ...r, n: Number(r.n) }));
}

/** Exact row counts of every table (and the number of large objects), read in one statement (one snapshot). */
export async function tableCounts(sql: Queryable): Promise<Record<string, number>> {
  return Object.fromEntries((await countRows(sql)).map((r) => [r.name, r.n]));
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

export function quoteLiteral(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}
