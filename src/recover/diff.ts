import type { Queryable } from "../pg/db.ts";
import { scopeQuery, type Graph, type TableInfo } from "./graph.ts";

export type Row = Record<string, unknown>;
export type Changed = { source: Row; current: Row; columns: string[] };

/** One table of the preview: what the backup has that is gone, what differs, what is new since. */
export type TableDiff = {
  table: string;
  /** In the backup, not in the live database: brought back by default. */
  missing: Row[];
  /** In both, with different values: brought back only with --revert-changed. */
  changed: Changed[];
  /** Only in the live database (written after the backup): always kept. */
  createdSince: Row[];
  same: number;
};

export type Rows = Map<string, Row[]>;

/**
 * Every row in scope, table by table, as JSON (jsonb: one stable text form per value, which both
 * sides compare and the apply turns back into typed rows with jsonb_populate_recordset). The caller
 * runs this in a transaction, so the timezone setting stays local to it.
 */
export async function readScope(tx: Queryable, graph: Graph, rootWhere: (alias: string) => string): Promise<Rows> {
  await tx.unsafe("set local timezone = 'UTC'");
  const out: Rows = new Map();
  for (const t of graph.tables) {
    const rows = await tx.unsafe<{ r: Row }[]>(
      `select pg_catalog.to_jsonb(s) as r from (${scopeQuery(graph, t.name, rootWhere)}) s`,
    );
    out.set(
      t.name,
      rows.map((x) => x.r),
    );
  }
  return out;
}

export const keyOf = (t: TableInfo, row: Row) => JSON.stringify(t.primaryKey.map((c) => row[c]));

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/**
 * What of an account its owner set since the backup and a recovery never takes back, not even
 * --revert-changed: how they sign in. A password changed after a break-in would otherwise be the
 * stolen one again. An account brought back whole (missing now, or --restore-account) has its own.
 */
const KEPT_AS_THEY_ARE: Record<string, string[]> = { users: ["email", "password_hash", "email_verified_at"] };
export const keptColumns = (t: TableInfo) => (KEPT_AS_THEY_ARE[t.name] ?? []).filter((c) => t.columns.includes(c));

export function diffScope(graph: Graph, source: Rows, current: Rows): TableDiff[] {
  return graph.tables.map((t) => {
    const now = new Map((current.get(t.name) ?? []).map((r) => [keyOf(t, r), r]));
    const before = new Set<string>();
    const d: TableDiff = { table: t.name, missing: [], changed: [], createdSince: [], same: 0 };
    const kept = keptColumns(t);
    for (const backedUp of source.get(t.name) ?? []) {
      const key = keyOf(t, backedUp);
      before.add(key);
      const found = now.get(key);
      if (!found) d.missing.push(backedUp);
      else {
        // The row a revert writes: the backup's, but for what is kept as it is now.
        const row = kept.length ? { ...backedUp, ...Object.fromEntries(kept.map((c) => [c, found[c]])) } : backedUp;
        const columns = t.columns.filter((c) => !same(row[c], found[c]));
        if (columns.length) d.changed.push({ source: row, current: found, columns });
        else d.same++;
      }
    }
    for (const [key, row] of now) if (!before.has(key)) d.createdSince.push(row);
    return d;
  });
}

/** An order-independent digest of rows (sorted by key): "exactly as in the backup" in one value. */
export function digestRows(t: TableInfo, rows: Row[]): string {
  const h = new Bun.CryptoHasher("sha256");
  for (const r of [...rows].sort((a, b) => (keyOf(t, a) < keyOf(t, b) ? -1 : 1)))
    h.update(JSON.stringify(t.columns.map((c) => r[c] ?? null)) + "\n");
  return h.digest("hex");
}
