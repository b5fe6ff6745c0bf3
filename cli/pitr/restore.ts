import type { Context, Subcommand } from "../command.ts";
import { json, line, table } from "../output.ts";
import { confirmDatabaseOption, confirmDestructive, undoCommand } from "../guard.ts";
import { formatDuration } from "../../src/duration.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { mainTables } from "../../src/pg/tables.ts";
import { databaseState } from "../status/report.ts";
import { withMaintenanceLock } from "../../src/pg/lock.ts";
import { walStore } from "../../src/wal/offsite.ts";
import { applyRecovered, type ApplyStep } from "../../src/pitr/apply.ts";
import { removeDayOld } from "../../src/pitr/instance.ts";
import { connectRecovered, recoverTo, type Recovery } from "../../src/pitr/recover.ts";
import { lsnTarget, nameTarget, parseTargetTime, type RecoveryTarget } from "../../src/pitr/target.ts";

const applyLabels: Record<ApplyStep, string> = {
  "safety-backup": "taking a pre-restore safety backup of the live database",
  restore: "loading the recovered state in one transaction",
  compare: "comparing every table's count and content digest with the recovered instance",
};

function targetOf(ctx: Context): RecoveryTarget {
  const given = [ctx.option("to"), ctx.option("to-lsn"), ctx.option("to-name")].filter((x) => x !== undefined);
  if (given.length !== 1)
    throw new ShinkeiError(
      "USAGE",
      "pitr restore takes exactly one of --to TIME, --to-lsn LSN, --to-name RESTORE_POINT",
    );
  if (ctx.option("to") !== undefined) return parseTargetTime(ctx.option("to")!, ctx.config.backup.timezone);
  if (ctx.option("to-lsn") !== undefined) return lsnTarget(ctx.option("to-lsn")!);
  return nameTarget(ctx.option("to-name")!);
}

function reachedLines(r: Recovery): string[] {
  const d = r.reached.distanceMs;
  const commit = r.reached.commitTime ?? "none (no transaction replayed after the base backup)";
  const distance = d === null ? "" : `, ${formatDuration(Math.abs(d))} ${d >= 0 ? "before" : "after"} the target`;
  const fromSpool = r.walFiles.some((f) => f.from === "receiving" || f.from === "partial")
    ? ", including WAL received but not sealed yet (the spool)"
    : "";
  return [
    `target     ${r.target}`,
    `base       ${r.base} (window ${r.window.earliest} .. ${r.window.latest})`,
    `reached    LSN ${r.reached.lsn ?? "?"}, last replayed commit ${commit}${distance}`,
    ...(r.reached.stopped ? [`stopped    ${r.reached.stopped}`] : []),
    ...(r.replayedAll
      ? [
          "note       the archive holds no commit after the target: all of it was replayed, which is the " +
            "state at the target",
        ]
      : []),
    `replayed   ${r.walFiles.length} WAL file(s)${fromSpool}; recovered in ${formatDuration(r.durationMs)}`,
  ];
}

/** `pitr restore`: recover a scratch instance, then leave it running, stop it, hand it over, or apply it. */
async function pitrRestore(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const target = targetOf(ctx);
  const apply = ctx.flag("apply");
  const intoDir = ctx.option("into-dir");
  if (apply && intoDir) throw new ShinkeiError("USAGE", "--apply and --into-dir exclude each other");
  const live = describeTarget(config.databaseUrl);
  // Ask before the long part: the operator confirms once, then can leave it running.
  if (apply)
    await confirmDestructive(
      ctx,
      live,
      `replace the database ${live.database} with its state at the recovery target`,
      [live.database],
      "yes",
    );

  const t0 = performance.now();
  const say = (m: string) => io.stderr.write(`… ${formatDuration(performance.now() - t0).padStart(6)}  ${m}\n`);
  const recovery = await recoverTo({
    config,
    target,
    store: walStore(config),
    keep: !ctx.flag("stop") && !apply,
    intoDir,
    onStep: say,
    allowUnencrypted: ctx.flag("allow-unencrypted"),
  });
  const asJson = ctx.flag("json");
  const out: Record<string, unknown> = {
    target: recovery.target,
    base: recovery.base,
    window: recovery.window,
    reached: recovery.reached,
    replayedAll: recovery.replayedAll,
    walFiles: recovery.walFiles.length,
    walSources: Object.fromEntries(
      Object.entries(Object.groupBy(recovery.walFiles, (f) => f.from)).map(([k, v]) => [k, v!.length]),
    ),
    walStaged: recovery.walFiles.filter((f) => f.staged).length,
    durationMs: recovery.durationMs,
  };
  if (!asJson) for (const l of reachedLines(recovery)) line(io, l);

  if (intoDir) {
    out.dataDir = intoDir;
    if (asJson) return (json(io, out), 0);
    line(io, `data dir   ${intoDir}`);
    line(io, "\nThe recovered data directory, with its original settings and pg_hba.conf. To run it as a new server:");
    line(io, `  pg_ctl -D ${intoDir} -o "-c port=5433" start   (as the database's OS user; pick a free port)`);
    line(io, "It continues on a new timeline. Check listen_addresses, archive_command and replication settings");
    line(io, "before exposing it, and do not point the WAL receiver of the old server's archive at it.");
    return 0;
  }

  try {
    const scratch = connectRecovered(recovery.url!);
    const state = await databaseState(scratch, recovery.url!).finally(() => scratch.end({ timeout: 2 }));
    out.counts = state.counts;
    out.schemaVersion = state.schemaVersion;
    if (!asJson) {
      line(io, `schema     version ${state.schemaVersion} of ${state.latestSchemaVersion}`);
      line(io, table([["table", "rows"], ...mainTables.map((t) => [t, state.counts[t] ?? "missing"])]));
    }

    if (apply) {
      if (!asJson) line(io, `\napplying to ${live.database} on ${live.host}:${live.port}`);
      const result = await withMaintenanceLock(
        ctx.db,
        "pitr restore --apply",
        (lock) =>
          applyRecovered({
            sql: ctx.db,
            url: config.databaseUrl,
            dir: config.backupDir,
            scratchUrl: recovery.url!,
            safetyBackup: !ctx.flag("no-safety-backup"),
            age: config.backup.age,
            lock,
            onStep: (s) => say(applyLabels[s]),
          }),
        ctx.flag("wait"),
      );
      out.applied = {
        safetyBackup: result.safety?.path ?? null,
        counts: result.after.counts,
        mismatches: result.mismatches,
        durationMs: result.durationMs,
      };
      if (!asJson) {
        if (result.safety) line(io, `safety backup  ${result.safety.path}`);
        line(
          io,
          `applied        in ${formatDuration(result.durationMs)}; rows ` +
            `now ${mainTables.map((t) => `${t} ${result.after.counts[t] ?? 0}`).join(", ")}`,
        );
      }
      if (result.mismatches.length)
        throw new ShinkeiError(
          "RESTORE_FAILED",
          `applied, but the live database differs from the recovered instance: ${result.mismatches.join("; ")}`,
        );
      if (!asJson) {
        line(io, "every table's count and content digest match the recovered instance");
        if (result.safety) line(io, `undo with      ${await undoCommand(config, result.safety.path)}`);
      }
    }
  } finally {
    if (apply || ctx.flag("stop")) await recovery.stop();
  }

  if (apply || ctx.flag("stop")) {
    if (asJson) json(io, out);
    else line(io, "scratch instance stopped and removed");
    return 0;
  }
  out.url = recovery.url;
  out.instance = recovery.instance.root;
  if (asJson) return (json(io, out), 0);
  line(io, `\nrunning    ${recovery.url}`);
  line(io, `folder     ${recovery.instance.root}`);
  line(io, "Inspect it (psql, or DATABASE_URL=... shinkei status), then either");
  const again =
    ctx.option("to") !== undefined
      ? `--to "${ctx.option("to")}"`
      : ctx.option("to-lsn") !== undefined
        ? `--to-lsn ${ctx.option("to-lsn")}`
        : `--to-name ${ctx.option("to-name")}`;
  line(io, `  shinkei pitr restore ${again} --apply   (recovers again and loads it into ${live.database})`);
  line(io, "  shinkei pitr cleanup   (stops and removes it; instances older than a day go by themselves)");
  return 0;
}

export const restore: Subcommand = {
  word: "restore",
  summary: "recover a scratch instance to a moment, an LSN or a restore point",
  description: `Recovers a scratch PostgreSQL instance (same major version as the base backup, in a
temporary folder, on a free 127.0.0.1 port) to TIME: an ISO time with its zone, a local time in
BACKUP_TIMEZONE ("2026-03-01 17:01:59"), latest, or -5m (before now); or to an LSN or a restore
point. It starts from the newest base backup that ends before the target (local, else off-site),
replays the archived WAL through wal-fetch, promotes at the target and reports the last replayed
commit and LSN. A target outside the recoverable window is refused. By default the instance keeps
running and its URL is printed, to inspect; --stop, --apply or --into-dir instead.`,
  options: {
    to: {
      type: "string",
      oneOf: "target",
      value: "TIME",
      description: "the moment to recover to (one of --to, --to-lsn, --to-name)",
    },
    "to-lsn": { type: "string", oneOf: "target", value: "LSN", description: "the LSN to recover to" },
    "to-name": { type: "string", oneOf: "target", value: "NAME", description: "the restore point to recover to" },
    stop: { type: "boolean", description: "stop and remove it" },
    apply: {
      type: "boolean",
      description: `load it into DATABASE_URL's database in one transaction (all or nothing), after a
pre-restore safety backup; asks for the database name, or --yes
--confirm-database NAME without a terminal`,
    },
    "into-dir": {
      type: "string",
      value: "DIR",
      description: "keep the recovered data directory at DIR (stopped, original settings) to run as\na new server",
    },
    yes: { type: "boolean", description: "with --apply: without the typed confirmation (needs --confirm-database)" },
    "confirm-database": { ...confirmDatabaseOption, value: "NAME" },
    "allow-production": {
      type: "boolean",
      description: "with --apply: run even when SHINKEI_ENV/NODE_ENV is production",
    },
    "no-safety-backup": { type: "boolean", description: "with --apply: without the pre-restore safety backup" },
    wait: { type: "boolean", description: "with --apply: wait for the maintenance lock" },
    "allow-unencrypted": { type: "boolean", description: "use plain base backups and WAL although this host encrypts" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  async run(ctx) {
    await removeDayOld();
    return pitrRestore(ctx);
  },
};
