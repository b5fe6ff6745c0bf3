import type { Queryable } from "./db.ts";

/** The newest applied version, 0 for an unmigrated database; works inside a transaction. */
export async function currentSchemaVersion(sql: Queryable): Promise<number> {
  const [exists] = await sql`select to_regclass('public.schema_migrations') is not null as ok`;
  if (!exists!.ok) return 0;
  const [row] = await sql`select coalesce(max(version), 0)::int as v from public.schema_migrations`;
  return row!.v;
}
