import type { Subcommand } from "../command.ts";
import { line, table, json } from "../output.ts";
import { mainTables } from "../../src/pg/tables.ts";
import { databaseState } from "./report.ts";
import { formatBytes } from "../../src/bytes.ts";

/** `shinkei status`: the database's state, once. */
export const show: Subcommand = {
  default: true,
  summary: "show the database's state: row counts, schema version, size",
  description: `Shows the database DATABASE_URL points at: the row counts of users, worlds, stories,
story_beats and sessions, the schema version, the database size, and how many password
reset codes are pending (a count only: codes are stored as hashes and never shown).`,
  options: { json: { type: "boolean", description: "machine-readable output" } },
  async run(ctx) {
    const s = await databaseState(ctx.db, ctx.config.databaseUrl);
    if (ctx.flag("json")) {
      json(ctx.io, s);
      return 0;
    }
    line(ctx.io, `database  ${s.database} on ${s.host}:${s.port} (PostgreSQL ${s.serverVersion})`);
    line(
      ctx.io,
      `schema    version ${s.schemaVersion} of ${s.latestSchemaVersion}` +
        (s.pendingMigrations ? ` (${s.pendingMigrations} pending: run shinkei migrate)` : ""),
    );
    line(ctx.io, `size      ${formatBytes(s.sizeBytes)}`);
    if (s.pendingResetCodes !== null)
      line(
        ctx.io,
        `resets    ${s.pendingResetCodes} reset code${s.pendingResetCodes === 1 ? "" : "s"} pending ` +
          `(unexpired, unused)`,
      );
    line(ctx.io);
    line(ctx.io, table([["table", "rows"], ...mainTables.map((t) => [t, s.counts[t] ?? "missing"])]));
    return 0;
  },
};
