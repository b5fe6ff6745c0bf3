import type { Queryable } from "../pg/db.ts";
import { countRows } from "../pg/tables.ts";

export type TableStats = { counts: Record<string, number>; digests: Record<string, string> };

/**
 * Row count and an order-independent content digest of every table, in one statement (one
 * snapshot, one pass per table). The digest sums the first 64 bits of each row's md5: unlike an
 * XOR, two identical rows do not cancel out. Row text depends on these settings, so the backup and
 * the drill that checks it fix them the same way.
 */
export async function tableStats(tx: Queryable): Promise<TableStats> {
  await tx.unsafe(
    "set local timezone = 'UTC'; set local datestyle = 'ISO, YMD'; set local intervalstyle = 'postgres'; " +
      "set local extra_float_digits = 3",
  );
  const rows = await countRows(
    tx,
    // record_out, never `::text`: a cast the loaded file defined from its row type to text would run
    // its function here, as whoever takes the digest. Same text as the built-in cast, so same digests.
    (r) =>
      "coalesce(pg_catalog.sum(('x' || pg_catalog.substr(pg_catalog.md5(pg_catalog.textin(pg_catalog.record_out(" +
      `${r}))), 1, 16))::bit(64)::int8::numeric), 0)::text`,
  );
  return {
    counts: Object.fromEntries(rows.map((r) => [r.name, r.n])),
    digests: Object.fromEntries(rows.filter((r) => r.digest !== null).map((r) => [r.name, r.digest!])),
  };
}
