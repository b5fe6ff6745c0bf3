import type { Command } from "./command.ts";
import { ShinkeiError } from "../src/errors.ts";
import { line, table, json } from "./output.ts";
import { mainTables } from "../src/pg/tables.ts";
import { databaseState } from "./status-report.ts";
import { formatBytes } from "../src/bytes.ts";
import { watch } from "./status-watch.ts";

export const statusCommand: Command = {
  name: "status",
  summary: "show the database's state: row counts, schema version, size",
  help: `Usage: shinkei status [--json] [--watch [--interval 2s]]

Shows the database DATABASE_URL points at: the row counts of users, worlds, stories,
story_beats and sessions, the schema version, the database size, and how many password
reset codes are pending (a count only: codes are stored as hashes and never shown).

With --watch, shows the status page's headline figures instead, redrawn every --interval
until Ctrl-C: the last verified restore, the newest backup, the last drill, off-site copies
pending, the database, and what is wrong.

Options:
  --json       machine-readable output
  --watch      keep showing the backup headline figures, refreshing
  --interval D with --watch: how often to refresh (1s to 1h, default 2s)
  -h, --help   show this help`,
  options: { json: { type: "boolean" }, watch: { type: "boolean" }, interval: { type: "string" } },
  async run(ctx) {
    if (ctx.flag("watch")) {
      if (ctx.flag("json")) throw new ShinkeiError("USAGE", "--watch and --json do not go together; for figures a script reads, scrape /metrics");
      return watch(ctx);
    }
    if (ctx.option("interval")) throw new ShinkeiError("USAGE", "--interval goes with --watch");
    const s = await databaseState(ctx.db, ctx.config.databaseUrl);
    if (ctx.flag("json")) {
      json(ctx.io, s);
      return 0;
    }
    line(ctx.io, `database  ${s.database} on ${s.host}:${s.port} (PostgreSQL ${s.serverVersion})`);
    line(ctx.io, `schema    version ${s.schemaVersion} of ${s.latestSchemaVersion}${s.pendingMigrations ? ` (${s.pendingMigrations} pending: run shinkei migrate)` : ""}`);
    line(ctx.io, `size      ${formatBytes(s.sizeBytes)}`);
    if (s.pendingResetCodes !== null) line(ctx.io, `resets    ${s.pendingResetCodes} reset code${s.pendingResetCodes === 1 ? "" : "s"} pending (unexpired, unused)`);
    line(ctx.io);
    line(ctx.io, table([["table", "rows"], ...mainTables.map((t) => [t, s.counts[t] ?? "missing"])]));
    return 0;
  },
};
