import type { Subcommand } from "../command.ts";
import { line } from "../output.ts";
import { ensureDatabase } from "../../src/pg/db.ts";
import { migrate } from "../../src/migrations/migrate.ts";
import { withLoadRole } from "../../src/backup/loadrole.ts";

/** `shinkei migrate`: every pending migration, each in its own transaction. */
export const up: Subcommand = {
  default: true,
  summary: `apply every pending migration, each in its own transaction;
creates the database named in DATABASE_URL when it is missing`,
  options: {},
  async run(ctx) {
    const created = await ensureDatabase(ctx.config.databaseUrl);
    if (created) line(ctx.io, `created database ${new URL(ctx.config.databaseUrl).pathname.slice(1)}`);
    // As the load's role (withLoadRole): the app's tables, triggers and defaults are its code, and
    // a migration writes them (schema_migrations included).
    const applied = await withLoadRole(ctx.config.databaseUrl, (writer) => migrate(writer));
    if (applied.length === 0) line(ctx.io, "schema is up to date");
    for (const m of applied) line(ctx.io, `applied ${String(m.version).padStart(4, "0")} ${m.name}`);
    return 0;
  },
};
