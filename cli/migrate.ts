import type { Command } from "./command.ts";
import { line, table, json } from "./output.ts";
import { ensureDatabase } from "../src/pg/db.ts";
import { guardOptions } from "./guard.ts";
import { runMigrateDown } from "./migrate-down.ts";
import { migrate, migrationStatus } from "../src/migrations/migrate.ts";

export const migrateCommand: Command = {
  name: "migrate",
  summary: "apply pending migrations (creates the database if missing); `status`, `down`",
  help: `Usage: shinkei migrate [status|down] [options]

  shinkei migrate            apply every pending migration, each in its own transaction;
                             creates the database named in DATABASE_URL when it is missing
  shinkei migrate status     list applied and pending migrations
  shinkei migrate down       undo the newest migration: shows what it drops, asks you to type
                             the database name, takes and verifies a backup first

Options for down:
  --dry-run                  show what the step drops; change nothing
  --force --confirm-database NAME   run without a terminal
  --allow-production         run even when SHINKEI_ENV/NODE_ENV is production
  --wait                     queue behind a running backup, restore or reset

Other options:
  --json                     machine-readable output (status)
  -h, --help                 show this help`,
  options: { json: { type: "boolean" }, ...guardOptions },
  subcommands: ["status", "down"],
  async run(ctx) {
    const sub = ctx.positionals[0];
    if (sub === "down") return runMigrateDown(ctx);
    if (sub === "status") {
      const s = await migrationStatus(ctx.db);
      if (ctx.flag("json")) {
        json(ctx.io, { current: s.current, latest: s.latest, applied: s.applied, pending: s.pending.map(({ version, name }) => ({ version, name })) });
        return 0;
      }
      const rows: (string | number)[][] = [["version", "name", "state"]];
      for (const a of s.applied) rows.push([String(a.version).padStart(4, "0"), a.name, `applied ${a.applied_at.toISOString()}`]);
      for (const p of s.pending) rows.push([String(p.version).padStart(4, "0"), p.name, "pending"]);
      line(ctx.io, table(rows));
      line(ctx.io, `\nschema version ${s.current} of ${s.latest}`);
      return 0;
    }
    const created = await ensureDatabase(ctx.config.databaseUrl);
    if (created) line(ctx.io, `created database ${new URL(ctx.config.databaseUrl).pathname.slice(1)}`);
    const applied = await migrate(ctx.db);
    if (applied.length === 0) line(ctx.io, "schema is up to date");
    for (const m of applied) line(ctx.io, `applied ${String(m.version).padStart(4, "0")} ${m.name}`);
    return 0;
  },
};
