import type { Context } from "../command.ts";
import { line, json } from "../output.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { checkFreshness } from "../../src/backup/freshness.ts";
import { assertPitrHealthy, pitrStatus } from "../../src/wal/status.ts";
import { pitrDrillProblem } from "../../src/pitr/drill.ts";
import { ShinkeiError } from "../../src/errors.ts";

export async function check(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const pitr = config.wal.archive === "stream" ? await pitrStatus(ctx.db, config) : null;
  if (pitr) assertPitrHealthy(pitr, config.wal.maxLagMs, config.wal.offsiteMaxLagMs);
  const pitrDrill = await pitrDrillProblem(config);
  if (pitrDrill) throw new ShinkeiError("PITR_AT_RISK", pitrDrill, { hint: "Run shinkei pitr drill (the backup service runs one on PITR_DRILL_SCHEDULE and after its first base backup)." });
  const f = await checkFreshness(config.backupDir, config.backup.maxAgeMs, config.backup.drillMaxAgeMs, config.backup.age);
  const drillAge = f.drill ? Date.now() - Date.parse(f.drill.at) : null;
  if (ctx.flag("json")) {
    const drillInfo = f.drill ? { file: f.drill.file, ageSeconds: Math.round(drillAge! / 1000) } : { skipped: "encrypted, and no key on this host" };
    return json(io, { ok: true, newest: f.newest!.name, ageSeconds: Math.round(f.ageMs! / 1000), drill: drillInfo, ...(pitr && { pitr: { window: pitr.window, lagBytes: pitr.receiver.lagBytes, lagSeconds: pitr.receiver.lagSeconds } }) }), 0;
  }
  line(io, `✔ newest good backup ${f.newest!.name} is ${formatDuration(f.ageMs!)} old (limit ${formatDuration(config.backup.maxAgeMs)})`);
  if (f.drill) line(io, `✔ ${f.drill.file} passed a restore drill ${formatDuration(drillAge!)} ago (limit ${formatDuration(config.backup.drillMaxAgeMs)})`);
  else line(io, "- drills not checked here: the backup is encrypted and this host holds no key to open it");
  if (pitr) line(io, `✔ point-in-time window ${pitr.window.earliest} .. ${pitr.window.latest}, WAL lag ${formatBytes(pitr.receiver.lagBytes)} (limit ${formatDuration(config.wal.maxLagMs)}), no gaps`);
  return 0;
}
