import type { Context, Subcommand } from "../command.ts";
import { line, json } from "../output.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { checkFreshness } from "../../src/backup/freshness.ts";
import { assertPitrHealthy, pitrStatus } from "../../src/wal/status.ts";
import { pitrDrillProblem } from "../../src/pitr/drill.ts";
import { ShinkeiError } from "../../src/errors.ts";

export async function check(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  if (ctx.flag("live")) return live(ctx);
  const pitr = config.wal.archive === "stream" ? await pitrStatus(ctx.db, config) : null;
  if (pitr) assertPitrHealthy(pitr, config.wal.maxLagMs, config.wal.offsiteMaxLagMs);
  const pitrDrill = await pitrDrillProblem(config);
  if (pitrDrill)
    throw new ShinkeiError("PITR_AT_RISK", pitrDrill, {
      hint:
        "Run shinkei pitr drill (the backup service runs one on PITR_DRILL_SCHEDULE and after its first base " +
        "backup).",
    });
  const f = await checkFreshness(
    config.backupDir,
    config.backup.maxAgeMs,
    config.backup.drillMaxAgeMs,
    config.backup.age,
    describeTarget(config.databaseUrl),
  );
  const drillAge = f.drill ? Date.now() - Date.parse(f.drill.at) : null;
  if (ctx.flag("json")) {
    const drillInfo = f.drill
      ? { file: f.drill.file, ageSeconds: Math.round(drillAge! / 1000) }
      : { skipped: "encrypted, and no key on this host" };
    return (
      json(io, {
        ok: true,
        newest: f.newest!.name,
        ageSeconds: Math.round(f.ageMs! / 1000),
        drill: drillInfo,
        ...(pitr && {
          pitr: { window: pitr.window, lagBytes: pitr.receiver.lagBytes, lagSeconds: pitr.receiver.lagSeconds },
        }),
      }),
      0
    );
  }
  line(
    io,
    `✔ newest good backup ${f.newest!.name} is ${formatDuration(f.ageMs!)} old ` +
      `(limit ${formatDuration(config.backup.maxAgeMs)})`,
  );
  if (f.drill)
    line(
      io,
      `✔ ${f.drill.file} passed a restore drill ${formatDuration(drillAge!)} ago ` +
        `(limit ${formatDuration(config.backup.drillMaxAgeMs)})`,
    );
  else line(io, "- drills not checked here: the backup is encrypted and this host holds no key to open it");
  if (pitr)
    line(
      io,
      `✔ point-in-time window ${pitr.window.earliest} .. ${pitr.window.latest}, WAL ` +
        `lag ${formatBytes(pitr.receiver.lagBytes)} (limit ${formatDuration(config.wal.maxLagMs)}), no gaps`,
    );
  return 0;
}

/**
 * The backup service's container health: is it doing its job right now (the database answers, and
 * with WAL_ARCHIVE=stream the receiver is connected through a slot the server still honours)?
 * A fresh install passes within seconds; whether backups, base backups and drills are recent
 * enough is the full check's question, for a monitor (a container marked unhealthy for the days
 * before its first scheduled drill would only teach people to ignore the mark).
 */
async function live(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  await ctx.db`select 1`;
  if (config.wal.archive !== "stream") return (line(io, "✔ the database answers"), 0);
  const s = await pitrStatus(ctx.db, config);
  const problems: string[] = [];
  if (!s.receiver.connected) problems.push("the WAL receiver is not connected");
  if (s.slotName && !s.slot) problems.push(`replication slot "${s.slotName}" does not exist`);
  if (s.slot && (s.slot.walStatus === "lost" || s.slot.walStatus === "unreserved"))
    problems.push(`replication slot "${s.slot.name}" is ${s.slot.walStatus}`);
  if (problems.length)
    throw new ShinkeiError("PITR_AT_RISK", problems.join("; "), {
      hint: "See shinkei pitr status, and the backup service's log (wal receiver lines).",
    });
  line(io, `✔ the database answers; WAL receiver streaming, flushed ${s.receiver.flushLsn ?? "-"}`);
  return 0;
}

export const checkForm: Subcommand = {
  word: "check",
  summary: `exit 1 when the newest good backup is older than BACKUP_MAX_AGE,
failed its drill, or no drill passed within BACKUP_DRILL_MAX_AGE;
with WAL_ARCHIVE=stream also when the WAL archive lags more than
PITR_MAX_LAG, the slot is lost or unreserved, or WAL after the
newest base backup has a gap (see shinkei pitr status)`,
  options: {
    live: {
      type: "boolean",
      description: `the service's health now: the database answers and, with
WAL_ARCHIVE=stream, the WAL receiver is connected (its slot
not lost); the container's health check`,
    },
    json: { type: "boolean", description: "machine-readable output" },
  },
  run: check,
};
