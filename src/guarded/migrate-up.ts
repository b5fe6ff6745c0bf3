import type { Sql } from "../pg/db.ts";
import { withLoadRole } from "../backup/loadrole.ts";
import { migrate, migrationStatus } from "../migrations/migrate.ts";
import type { Migration } from "../migrations/index.ts";

/**
 * Pending migrations, applied as the load's role (withLoadRole), not as DATABASE_URL's when that
 * can reach the server's OS: the app's tables, their triggers and defaults are the app's code, and
 * a migration writes them (schema_migrations included). Nothing pending: no role is made.
 */
export async function migrateUp(url: string, sql: Sql): Promise<Migration[]> {
  if ((await migrationStatus(sql)).pending.length === 0) return [];
  return withLoadRole(url, (writer) => migrate(writer));
}
