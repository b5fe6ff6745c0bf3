import type { Subcommand } from "../command.ts";
import { line, table, json } from "../output.ts";
import { migrationStatus } from "../../src/migrations/migrate.ts";

/** `shinkei migrate status`: applied and pending migrations. */
export const status: Subcommand = {
  word: "status",
  summary: "list applied and pending migrations",
  options: { json: { type: "boolean", description: "machine-readable output" } },
  async run(ctx) {
    const s = await migrationStatus(ctx.db);
    if (ctx.flag("json")) {
      json(ctx.io, {
        current: s.current,
        latest: s.latest,
        applied: s.applied,
        pending: s.pending.map(({ version, name }) => ({ version, name })),
      });
      return 0;
    }
    const rows: (string | number)[][] = [["version", "name", "state"]];
    for (const a of s.applied)
      rows.push([String(a.version).padStart(4, "0"), a.name, `applied ${a.applied_at.toISOString()}`]);
    for (const p of s.pending) rows.push([String(p.version).padStart(4, "0"), p.name, "pending"]);
    line(ctx.io, table(rows));
    line(ctx.io, `\nschema version ${s.current} of ${s.latest}`);
    return 0;
  },
};
