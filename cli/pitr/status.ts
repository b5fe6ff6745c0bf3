import type { Subcommand } from "../command.ts";
import { line, json, table, warn } from "../output.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { pitrProblems, pitrStatus } from "../../src/wal/status.ts";
import { removeDayOld } from "../../src/pitr/instance.ts";
import { readPitrDrills } from "../../src/pitr/drill.ts";

/** `pitr status` (also plain `pitr`): the recoverable window, gaps, receiver lag and slot. */
export const status: Subcommand = {
  word: "status",
  default: true,
  summary: "the recoverable window, WAL gaps, receiver lag and slot",
  description: `Shows what the WAL archive (WAL_ARCHIVE=stream) and the base backups in BACKUP_DIR can recover
to: the earliest and latest restorable time per timeline, every gap in the WAL sequence, how far
the receiver trails the server (bytes and seconds), and the replication slot's wal_status and
safe_wal_size. \`shinkei backup check\` fails on the same problems listed here.`,
  options: { json: { type: "boolean", description: "machine-readable output" } },
  async run(ctx) {
    const { io, config } = ctx;
    await removeDayOld();
    const s = await pitrStatus(ctx.db, config);
    const problems = pitrProblems(s, config.wal.maxLagMs, config.wal.offsiteMaxLagMs);
    const lastDrill = (await readPitrDrills(config.backupDir)).at(-1) ?? null;
    if (ctx.flag("json")) return (json(io, { ...s, lastDrill, problems }), 0);
    if (s.archive === "off")
      warn(io, "WAL_ARCHIVE is off: the service is not streaming WAL (showing what BACKUP_DIR holds)");
    // Until WAL received after the newest base backup's end arrives, its start lies after the last
    // WAL's time: pitr restore finds nothing to recover then, so that is no window yet either.
    const open = s.window.earliest !== null && s.window.latest !== null && s.window.earliest <= s.window.latest;
    const window = open
      ? `${s.window.earliest} .. ${s.window.latest} (timeline ${s.window.timeline})`
      : s.window.earliest
        ? "none yet: waiting for WAL written after the newest base backup"
        : "none: no base backup with all its WAL yet";
    line(io, `window     ${window}`);
    const r = s.receiver;
    const position = r.state ?? "position hidden from this role: grant it pg_read_all_stats; lag from the slot";
    const lagTime = r.lagSeconds >= 0 ? ` / ${formatDuration(r.lagSeconds * 1000)}` : "";
    line(
      io,
      `receiver   ${r.connected ? `streaming (${position})` : "NOT CONNECTED"}, ` +
        `flushed ${r.flushLsn ?? "-"}, server at ${r.serverLsn}, lag ${formatBytes(r.lagBytes)}${lagTime}`,
    );
    const slot = s.slot
      ? `${s.slot.name}: ${s.slot.walStatus ?? "?"}, ${s.slot.active ? "active" : "inactive"}, ` +
        `safe_wal_size ${s.slot.safeWalSize === null ? "unbounded" : formatBytes(s.slot.safeWalSize)}`
      : s.slotName
        ? `${s.slotName}: MISSING`
        : "none (WAL_SLOT=none)";
    line(io, `slot       ${slot}`);
    if (s.offsite) {
      const o = s.offsite;
      const behind = o.lagSeconds >= 0 ? `, ${formatDuration(o.lagSeconds * 1000)} behind the local archive` : "";
      line(
        io,
        `off-site   ${o.location}: covers up to ${o.coveredUntil ?? "nothing yet"}${behind}, ` +
          `${o.notCopied} file(s) not yet copied`,
      );
    }
    if (s.timelines.length) {
      line(
        io,
        table([
          ["timeline", "first segment", "last segment", "segments", "earliest", "latest"],
          ...s.timelines.map((t) => [
            t.timeline,
            t.firstSegment,
            t.lastSegment,
            t.segments,
            t.earliest ?? "-",
            t.latest ?? "-",
          ]),
        ]),
      );
    }
    const drill = lastDrill
      ? `${lastDrill.passed ? "passed" : "FAILED"} ${lastDrill.at}, restore point ${lastDrill.restorePoint}` +
        (lastDrill.rtoMs !== null ? `, RTO ${formatDuration(lastDrill.rtoMs)}` : "") +
        (lastDrill.passed ? "" : `: ${lastDrill.differences.join("; ")}`)
      : "none yet (shinkei pitr drill)";
    line(io, `drill      ${drill}`);
    for (const b of s.baseBackups) {
      const incomplete = b.walComplete ? "" : "  (WAL incomplete)";
      line(io, `base       ${b.file}  ${b.finishedAt}  ${b.startLsn}..${b.stopLsn}${incomplete}`);
    }
    for (const g of s.gaps) warn(io, `gap on timeline ${g.timeline}: ${g.from} .. ${g.to} (${g.segments} segment(s))`);
    for (const p of problems) warn(io, p);
    return 0;
  },
};
