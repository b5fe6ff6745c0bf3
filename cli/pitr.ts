import type { Command } from "./command.ts";
import { line, json, reportError, table, warn } from "./output.ts";
import { formatBytes, formatDuration } from "../src/duration.ts";
import { pitrProblems, pitrStatus } from "../src/wal/status.ts";
import { fetchWal } from "../src/wal/fetch.ts";
import { walStore } from "../src/wal/offsite.ts";
import { ShinkeiError } from "../src/errors.ts";

export const pitrCommand: Command = {
  name: "pitr",
  summary: "point-in-time recovery: the recoverable window, WAL gaps, receiver lag and slot",
  help: `Usage: shinkei pitr status [--json]
       shinkei pitr wal-fetch NAME TARGET

Shows what the WAL archive (WAL_ARCHIVE=stream) and the base backups in BACKUP_DIR can recover
to: the earliest and latest restorable time per timeline, every gap in the WAL sequence, how far
the receiver trails the server (bytes and seconds), and the replication slot's wal_status and
safe_wal_size. \`shinkei backup check\` fails on the same problems listed here.

wal-fetch is for PostgreSQL's restore_command = 'shinkei pitr wal-fetch %f %p': it writes the
archived WAL file NAME (from BACKUP_DIR, else the off-site copy) to TARGET after checking it
against its record, and exits 1 when it has no such file; 126 (which makes PostgreSQL abort
recovery rather than end it early) when the store is out of reach or a file is damaged.

Options:
  --json       machine-readable output
  -h, --help   show this help`,
  options: { json: { type: "boolean" } },
  subcommands: ["status", "wal-fetch"],
  needsDatabase: (positionals) => positionals[0] !== "wal-fetch",
  async run(ctx) {
    const { io, config } = ctx;
    if (ctx.positionals[0] === "wal-fetch") {
      const [, name, target, extra] = ctx.positionals;
      if (!name || !target || extra !== undefined) throw new ShinkeiError("USAGE", "wal-fetch takes a WAL file name and a target path (%f %p)");
      try {
        await fetchWal(config, name, target, walStore(config));
        return 0;
      } catch (e) {
        // PostgreSQL ends recovery at the first file restore_command lacks (exit 1). Anything else (a
        // store out of reach, a damaged file) must not pass for "no more WAL": above 125 aborts recovery.
        if (e instanceof ShinkeiError && (e.code === "NOT_FOUND" || e.code === "USAGE")) throw e;
        reportError(io, e);
        return 126;
      }
    }
    const s = await pitrStatus(ctx.db, config);
    const problems = pitrProblems(s, config.wal.maxLagMs);
    if (ctx.flag("json")) return json(io, { ...s, problems }), 0;
    if (s.archive === "off") warn(io, "WAL_ARCHIVE is off: the service is not streaming WAL (showing what BACKUP_DIR holds)");
    line(io, `window     ${s.window.earliest ? `${s.window.earliest} .. ${s.window.latest} (timeline ${s.window.timeline})` : "none: no base backup with all its WAL yet"}`);
    line(io, `receiver   ${s.receiver.connected ? `streaming (${s.receiver.state})` : "NOT CONNECTED"}, flushed ${s.receiver.flushLsn ?? "-"}, server at ${s.receiver.serverLsn}, lag ${formatBytes(s.receiver.lagBytes)}${s.receiver.lagSeconds >= 0 ? ` / ${formatDuration(s.receiver.lagSeconds * 1000)}` : ""}`);
    line(io, `slot       ${s.slot ? `${s.slot.name}: ${s.slot.walStatus ?? "?"}, ${s.slot.active ? "active" : "inactive"}, safe_wal_size ${s.slot.safeWalSize === null ? "unbounded" : formatBytes(s.slot.safeWalSize)}` : s.slotName ? `${s.slotName}: MISSING` : "none (WAL_SLOT=none)"}`);
    if (s.offsite) line(io, `off-site   ${s.offsite.location}: covers up to ${s.offsite.coveredUntil ?? "nothing yet"}${s.offsite.lagSeconds >= 0 ? `, ${formatDuration(s.offsite.lagSeconds * 1000)} behind the local archive` : ""}, ${s.offsite.notCopied} file(s) not yet copied`);
    if (s.timelines.length) {
      line(io, table([["timeline", "first segment", "last segment", "segments", "earliest", "latest"],
        ...s.timelines.map((t) => [t.timeline, t.firstSegment, t.lastSegment, t.segments, t.earliest ?? "-", t.latest ?? "-"])]));
    }
    for (const b of s.baseBackups) line(io, `base       ${b.file}  ${b.finishedAt}  ${b.startLsn}..${b.stopLsn}${b.walComplete ? "" : "  (WAL incomplete)"}`);
    for (const g of s.gaps) warn(io, `gap on timeline ${g.timeline}: ${g.from} .. ${g.to} (${g.segments} segment(s))`);
    for (const p of problems) warn(io, p);
    return 0;
  },
};
