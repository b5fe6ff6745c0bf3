import type { Context, Subcommand } from "../command.ts";
import { json, line } from "../output.ts";
import { formatDuration } from "../../src/duration.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { removeDayOld } from "../../src/pitr/instance.ts";
import { runPitrDrill } from "../../src/pitr/drill.ts";

/** `pitr drill`: one PITR drill now, recorded like the scheduled ones. */
async function pitrDrill(ctx: Context): Promise<number> {
  const r = await runPitrDrill({ sql: ctx.db, config: ctx.config, onStep: (m) => ctx.io.stderr.write(`… ${m}\n`) });
  if (ctx.flag("json")) json(ctx.io, r);
  else {
    line(
      ctx.io,
      `${r.passed ? "✔ passed" : "✖ FAILED"}  restore point ${r.restorePoint} (${r.lsn ?? "?"}) recovered ` +
        `from ${r.base ?? "-"}; RTO ${r.rtoMs === null ? "-" : formatDuration(r.rtoMs)}, ` +
        `drill ${formatDuration(r.durationMs)}`,
    );
    for (const d of r.differences) line(ctx.io, `  ${d}`);
  }
  if (!r.passed)
    throw new ShinkeiError("BACKUP_CORRUPT", `the point-in-time recovery drill failed: ${r.differences.join("; ")}`);
  return 0;
}

export const drill: Subcommand = {
  word: "drill",
  summary: "one point-in-time recovery drill now",
  description: `Creates a restore point, records every table's count and digest at it, recovers a scratch
instance to it and compares (what the backup service does on PITR_DRILL_SCHEDULE); the result
and the measured RTO show in pitr status.`,
  options: { json: { type: "boolean", description: "machine-readable output" } },
  async run(ctx) {
    await removeDayOld();
    return pitrDrill(ctx);
  },
};
