import type { Queryable } from "../pg/db.ts";
import { quoteIdent } from "../pg/tables.ts";

/** A foreign key from `child` to `parent`, column by column. */
export type Edge = { name: string; child: string; childColumns: string[]; parent: string; parentColumns: string[] };

export type TableInfo = { name: string; primaryKey: string[]; columns: string[] };

/** What the walk followed from the root, in insert order (parents before children), and what it left out. */
export type Graph = {
  root: string;
  tables: TableInfo[];
  edges: Edge[];
  skipped: { table: string; reason: string }[];
};

/** Sessions belong to a login, not to the user's work: the user signs in again after a recovery. */
export const NEVER_RESTORED: Record<string, string> = {
  sessions: "sessions are never restored: the user logs in again",
  account_codes: "reset and verification codes are never restored: a new one is mailed on request",
  account_notices: "when a notice was last mailed is the live server's record, not the user's data",
  account_events: "the account's event record is the live server's history, not the user's data",
};

/** Every foreign key, primary key and insertable column in `public`, from the catalog. */
async function catalog(sql: Queryable) {
  const edges = await sql<Edge[]>`
    select c.conname::text as name, ch.relname::text as child, p.relname::text as parent,
      array(select a.attname::text from pg_catalog.unnest(c.conkey) with ordinality k(n, i)
            join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.i) as "childColumns",
      array(select a.attname::text from pg_catalog.unnest(c.confkey) with ordinality k(n, i)
            join pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.n order by k.i) as "parentColumns"
    from pg_constraint c
    join pg_class ch on ch.oid = c.conrelid join pg_namespace n on n.oid = ch.relnamespace
    join pg_class p on p.oid = c.confrelid join pg_namespace pn on pn.oid = p.relnamespace
    where c.contype = 'f' and n.nspname = 'public' and pn.nspname = 'public'
    order by ch.relname, c.conname`;
  const tables = await sql<TableInfo[]>`
    select t.relname::text as name,
      coalesce((select array(select a.attname::text from pg_catalog.unnest(i.indkey::int2[]) with ordinality k(n, o)
               join pg_attribute a on a.attrelid = t.oid and a.attnum = k.n order by k.o)
         from pg_index i where i.indrelid = t.oid and i.indisprimary), '{}') as "primaryKey",
      array(select a.attname::text from pg_attribute a
            where a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
              order by a.attnum) as columns
    from pg_class t join pg_namespace n on n.oid = t.relnamespace
    where n.nspname = 'public' and t.relkind in ('r', 'p')`;
  return { edges, tables: new Map(tables.map((t) => [t.name, t])) };
}

/** A foreign key into a table of `public` from any table at all, with that table's primary key (if any). */
export type Reference = Edge & { name: string; childSchema: string; childPrimaryKey: string[] };

/**
 * Every foreign key into the `parents` tables of `public`, from any schema, any table: what deleting
 * a parent row would cascade to, set to null or be blocked by. Unlike the ownership graph, nothing is
 * left out: not the never-restored tables, not a table without a primary key, not a self-reference.
 */
export async function referencesInto(sql: Queryable, parents: string[]): Promise<Reference[]> {
  if (!parents.length) return [];
  return sql<Reference[]>`
    select c.conname::text as name, n.nspname::text as "childSchema", ch.relname::text as child,
      p.relname::text as parent,
      array(select a.attname::text from pg_catalog.unnest(c.conkey) with ordinality k(n, i)
            join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.i) as "childColumns",
      array(select a.attname::text from pg_catalog.unnest(c.confkey) with ordinality k(n, i)
            join pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.n order by k.i) as "parentColumns",
      coalesce((select array(select a.attname::text from pg_catalog.unnest(i.indkey::int2[]) with ordinality k(n, o)
               join pg_attribute a on a.attrelid = ch.oid and a.attnum = k.n order by k.o)
         from pg_index i where i.indrelid = ch.oid and i.indisprimary), '{}') as "childPrimaryKey"
    from pg_constraint c
    join pg_class ch on ch.oid = c.conrelid join pg_namespace n on n.oid = ch.relnamespace
    join pg_class p on p.oid = c.confrelid join pg_namespace pn on pn.oid = p.relnamespace
    where c.contype = 'f' and pn.nspname = 'public' and p.relname = any(${parents}::text[])
    order by n.nspname, ch.relname, c.conname`;
}

/**
 * Walk the foreign keys downwards from `root`: every table referencing a table already reached
 * belongs to the owner too. Read from the catalog, so a child table a migration adds is followed
 * with no change here. The result is in insert order: a table comes after every parent it has in the graph.
 */
export async function ownershipGraph(sql: Queryable, root: string): Promise<Graph> {
  const { edges, tables } = await catalog(sql);
  const reached = new Set([root]);
  const skipped: Graph["skipped"] = [];
  for (let grew = true; grew; ) {
    grew = false;
    for (const e of edges) {
      if (!reached.has(e.parent) || reached.has(e.child) || skipped.some((s) => s.table === e.child)) continue;
      if (NEVER_RESTORED[e.child]) skipped.push({ table: e.child, reason: NEVER_RESTORED[e.child]! });
      else if (!tables.get(e.child)?.primaryKey.length)
        skipped.push({ table: e.child, reason: "no primary key: its rows cannot be matched one by one" });
      else {
        reached.add(e.child);
        grew = true;
      }
    }
  }
  // A self-reference (a tree inside one table) cannot order its rows by table: it is followed, not sorted on.
  const inGraph = edges.filter(
    (e) => reached.has(e.child) && reached.has(e.parent) && e.child !== e.parent && e.child !== root,
  );
  const order: string[] = [];
  const pending = new Set(reached);
  while (pending.size) {
    const ready = [...pending].filter((t) => inGraph.every((e) => e.child !== t || !pending.has(e.parent)));
    // A cycle between tables: take them in the order reached; the apply reports any violation.
    for (const t of ready.length ? ready.sort() : [pending.values().next().value!]) {
      order.push(t);
      pending.delete(t);
    }
  }
  inGraph.sort(
    (a, b) => order.indexOf(a.child) - order.indexOf(b.child) || order.indexOf(a.parent) - order.indexOf(b.parent),
  );
  return { root, tables: order.map((t) => tables.get(t)!), edges: inGraph, skipped };
}

const cols = (alias: string, names: string[]) => `(${names.map((c) => `${alias}.${quoteIdent(c)}`).join(", ")})`;

/**
 * SQL selecting the rows of `table` that belong to the scope: the root's chosen rows, and below it
 * every row whose foreign key points at a row in scope (through any of its parents in the graph).
 * `rootWhere` gives the condition on the root table under the alias it is handed.
 */
export function scopeQuery(graph: Graph, table: string, rootWhere: (alias: string) => string, depth = 0): string {
  const alias = `t${depth}`;
  if (table === graph.root)
    return `select ${alias}.* from public.${quoteIdent(table)} ${alias} where ${rootWhere(alias)}`;
  const parents = graph.edges.filter((e) => e.child === table);
  const conditions = parents.map((e) => {
    const inner = scopeQuery(graph, e.parent, rootWhere, depth + 1);
    return `${cols(alias, e.childColumns)} in (select ${cols("p", e.parentColumns).slice(1, -1)} from (${inner}) p)`;
  });
  return `select ${alias}.* from public.${quoteIdent(table)} ${alias} where ${conditions.join(" or ")}`;
}

/** One line per followed foreign key, for the operator to see what was walked. */
export function describeGraph(graph: Graph): string[] {
  return [
    ...graph.edges.map(
      (e) =>
        `${e.parent} -> ${e.child}  (${e.child}.${e.childColumns.join(", ")} ` +
        `references ${e.parent}.${e.parentColumns.join(", ")})`,
    ),
    ...graph.skipped.map((s) => `not followed: ${s.table} (${s.reason})`),
  ];
}
