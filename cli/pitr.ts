import type { Command } from "./command.ts";
import { line, json, reportError, table, warn } from "./output.ts";
import { formatDuration } from "../src/duration.ts";
import { formatBytes } from "../src/bytes.ts";
import { pitrProblems, pitrStatus } from "../src/wal/status.ts";
import { fetchWal } from "../src/wal/fetch.ts";
import { walStore } from "../src/wal/offsite.ts";
import { ShinkeiError } from "../src/errors.ts";
import { fetchViaSocket } from "../src/pitr/walserve.ts";
import { removeDayOld } from "../src/pitr/instance.ts";
import { pitrCleanup, pitrDrill, pitrRestore } from "./pitr-restore.ts";
import { readPitrDrills } from "../src/pitr/drill.ts";
import { signArchive } from "../src/wal/sign.ts";

export const pitrCommand: Command = {
  name: "pitr",
  summary: "point-in-time recovery: restore to a moment, the recoverable window, WAL gaps, receiver lag and slot",
  help: `Usage: shinkei pitr status [--json]
       shinkei pitr restore (--to TIME | --to-lsn LSN | --to-name NAME) [--stop | --apply | --into-dir DIR] [--json]
       shinkei pitr cleanup [--json]
       shinkei pitr sign [--json]
       shinkei pitr drill [--json]
       shinkei pitr wal-fetch NAME TARGET

Shows what the WAL archive (WAL_ARCHIVE=stream) and the base backups in BACKUP_DIR can recover
to: the earliest and latest restorable time per timeline, every gap in the WAL sequence, how far
the receiver trails the server (bytes and seconds), and the replication slot's wal_status and
safe_wal_size. \`shinkei backup check\` fails on the same problems listed here.

wal-fetch is for PostgreSQL's restore_command = 'shinkei pitr wal-fetch %f %p': it writes the
archived WAL file NAME (from BACKUP_DIR, else the off-site copy) to TARGET after checking it
against its record, and exits 1 when it has no such file; 126 (which makes PostgreSQL abort
recovery rather than end it early) when the store is out of reach, a file is damaged, or its
record may not be used on this host (see below).

restore recovers a scratch PostgreSQL instance (same major version as the base backup, in a
temporary folder, on a free 127.0.0.1 port) to TIME: an ISO time with its zone, a local time in
BACKUP_TIMEZONE ("2026-03-01 17:01:59"), latest, or -5m (before now); or to an LSN or a restore
point. It starts from the newest base backup that ends before the target (local, else off-site),
replays the archived WAL through wal-fetch, promotes at the target and reports the last replayed
commit and LSN. A target outside the recoverable window is refused. By default the instance keeps
running and its URL is printed, to inspect; then:
  --stop         stop and remove it
  --apply        load it into DATABASE_URL's database in one transaction (all or nothing), after a
                 pre-restore safety backup; asks for the database name, or --yes
                 --confirm-database NAME without a terminal (--allow-production in production,
                 --no-safety-backup, --wait for the maintenance lock)
  --into-dir DIR keep the recovered data directory at DIR (stopped, original settings) to run as
                 a new server

drill creates a restore point, records every table's count and digest at it, recovers a scratch
instance to it and compares (what the backup service does on PITR_DRILL_SCHEDULE); the result
and the measured RTO show in pitr status.

cleanup stops and removes leftover scratch instances (every pitr command removes those older than
a day).

With BACKUP_MANIFEST_KEY set, only base backups and WAL files whose records this host signed are
used (window, restore, drills, wal-fetch, status); on a host that encrypts, plain ones only with
--allow-unencrypted (restore, drill, wal-fetch). sign signs the records of an archive written
before the key was set, each after its file matched its SHA-256: run it once, for an archive you
know is yours.

Options:
  --json       machine-readable output
  -h, --help   show this help`,
  options: {
    json: { type: "boolean" },
    to: { type: "string" },
    "to-lsn": { type: "string" },
    "to-name": { type: "string" },
    stop: { type: "boolean" },
    apply: { type: "boolean" },
    "into-dir": { type: "string" },
    yes: { type: "boolean" },
    "confirm-database": { type: "string" },
    "allow-unencrypted": { type: "boolean" },
    "allow-production": { type: "boolean" },
    "no-safety-backup": { type: "boolean" },
    wait: { type: "boolean" },
    socket: { type: "string" },
    watch: { type: "string" },
  },
  subcommands: ["status", "wal-fetch", "restore", "cleanup", "drill", "sign"],
  needsDatabase: (positionals) => positionals[0] !== "wal-fetch" && positionals[0] !== "cleanup" && positionals[0] !== "sign",
  async run(ctx) {
    const { io, config } = ctx;
    if (ctx.positionals[0] === "wal-fetch") {
      const [, name, target, extra] = ctx.positionals;
      if (!name || !target || extra !== undefined) throw new ShinkeiError("USAGE", "wal-fetch takes a WAL file name and a target path (%f %p)");
      try {
        // A scratch recovery's restore_command asks the shinkei process that runs it (src/pitr/walserve.ts).
        const socket = ctx.option("socket");
        if (socket) await fetchViaSocket(socket, name, target);
        else await fetchWal(config, name, target, walStore(config), { allowUnencrypted: ctx.flag("allow-unencrypted") });
        return 0;
      } catch (e) {
        // PostgreSQL ends recovery at the first file restore_command lacks (exit 1). Anything else (a
        // store out of reach, a damaged file) must not pass for "no more WAL": above 125 aborts recovery.
        if (e instanceof ShinkeiError && (e.code === "NOT_FOUND" || e.code === "USAGE")) throw e;
        reportError(io, e);
        return 126;
      }
    }
    if (ctx.positionals[0] === "cleanup") return pitrCleanup(ctx);
    if (ctx.positionals[0] === "sign") {
      const r = await signArchive(config, walStore(config));
      if (ctx.flag("json")) return json(io, r), r.refused.length ? 1 : 0;
      line(io, `signed ${r.signed.length} record(s)`);
      for (const u of r.refused) warn(io, u.problem);
      return r.refused.length ? 1 : 0;
    }
    await removeDayOld();
    if (ctx.positionals[0] === "restore") return pitrRestore(ctx);
    if (ctx.positionals[0] === "drill") return pitrDrill(ctx);
    const s = await pitrStatus(ctx.db, config);
    const problems = pitrProblems(s, config.wal.maxLagMs);
    const lastDrill = (await readPitrDrills(config.backupDir)).at(-1) ?? null;
    if (ctx.flag("json")) return json(io, { ...s, lastDrill, problems }), 0;
    if (s.archive === "off") warn(io, "WAL_ARCHIVE is off: the service is not streaming WAL (showing what BACKUP_DIR holds)");
    line(io, `window     ${s.window.earliest ? `${s.window.earliest} .. ${s.window.latest} (timeline ${s.window.timeline})` : "none: no base backup with all its WAL yet"}`);
    line(io, `receiver   ${s.receiver.connected ? `streaming (${s.receiver.state ?? "position hidden from this role: grant it pg_read_all_stats; lag from the slot"})` : "NOT CONNECTED"}, flushed ${s.receiver.flushLsn ?? "-"}, server at ${s.receiver.serverLsn}, lag ${formatBytes(s.receiver.lagBytes)}${s.receiver.lagSeconds >= 0 ? ` / ${formatDuration(s.receiver.lagSeconds * 1000)}` : ""}`);
    line(io, `slot       ${s.slot ? `${s.slot.name}: ${s.slot.walStatus ?? "?"}, ${s.slot.active ? "active" : "inactive"}, safe_wal_size ${s.slot.safeWalSize === null ? "unbounded" : formatBytes(s.slot.safeWalSize)}` : s.slotName ? `${s.slotName}: MISSING` : "none (WAL_SLOT=none)"}`);
    if (s.offsite) line(io, `off-site   ${s.offsite.location}: covers up to ${s.offsite.coveredUntil ?? "nothing yet"}${s.offsite.lagSeconds >= 0 ? `, ${formatDuration(s.offsite.lagSeconds * 1000)} behind the local archive` : ""}, ${s.offsite.notCopied} file(s) not yet copied`);
    if (s.timelines.length) {
      line(io, table([["timeline", "first segment", "last segment", "segments", "earliest", "latest"],
        ...s.timelines.map((t) => [t.timeline, t.firstSegment, t.lastSegment, t.segments, t.earliest ?? "-", t.latest ?? "-"])]));
    }
    line(io, `drill      ${lastDrill ? `${lastDrill.passed ? "passed" : "FAILED"} ${lastDrill.at}, restore point ${lastDrill.restorePoint}${lastDrill.rtoMs !== null ? `, RTO ${formatDuration(lastDrill.rtoMs)}` : ""}${lastDrill.passed ? "" : `: ${lastDrill.differences.join("; ")}`}` : "none yet (shinkei pitr drill)"}`);
    for (const b of s.baseBackups) line(io, `base       ${b.file}  ${b.finishedAt}  ${b.startLsn}..${b.stopLsn}${b.walComplete ? "" : "  (WAL incomplete)"}`);
    for (const g of s.gaps) warn(io, `gap on timeline ${g.timeline}: ${g.from} .. ${g.to} (${g.segments} segment(s))`);
    for (const p of problems) warn(io, p);
    return 0;
  },
};
