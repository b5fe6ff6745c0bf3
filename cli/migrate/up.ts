import type { Subcommand } from "../command.ts";
import { line } from "../output.ts";
import { ensureDatabase } from "../../src/pg/db.ts";
import { migrateUp } from "../../src/guarded/migrate-up.ts";

/** `shinkei migrate`: every pending migration, each in its own transaction. */
export const up: Subcommand = {
  default: true,
  summary: `apply every pending migration, each in its own transaction;
creates the database named in DATABASE_URL when it is missing`,
  options: {},
  async run(ctx) {
    const created = await ensureDatabase(ctx.config.databaseUrl);
    if (created) line(ctx.io, `created database ${new URL(ctx.config.databaseUrl).pathname.slice(1)}`);
    const applied = await migrateUp(ctx.config.databaseUrl, ctx.db);
    if (applied.length === 0) line(ctx.io, "schema is up to date");
    for (const m of applied) line(ctx.io, `applied ${String(m.version).padStart(4, "0")} ${m.name}`);
    return 0;
  },
};
