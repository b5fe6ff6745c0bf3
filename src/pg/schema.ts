import type { Queryable } from "./db.ts";
import { plainTable } from "./tables.ts";

/** The newest applied version, 0 for an unmigrated database; works inside a transaction. */
export async function currentSchemaVersion(sql: Queryable): Promise<number> {
  if (!(await plainTable(sql, "public.schema_migrations"))) return 0;
  const [row] = await sql`select coalesce(pg_catalog.max(version::int4), 0)::int4 as v from public.schema_migrations`;
  return row!.v;
}
