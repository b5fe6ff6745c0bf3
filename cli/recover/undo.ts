import type { Context, Subcommand } from "../command.ts";
import { json, line } from "../output.ts";
import { activity, typedConfirmation } from "../prompts.ts";
import { showUndo } from "./view.ts";
import { checkUnattended, confirmDatabaseOption } from "../guard.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { formatDuration } from "../../src/duration.ts";
import { loadRecovery } from "../../src/recover/record.ts";
import { plannedCounts, trialUndo, undoRecovery } from "../../src/recover/undo.ts";
import { withLoadRole } from "../../src/backup/loadrole.ts";
import { recoveryStore } from "../../src/recover/stores.ts";

/**
 * `recover --undo RECORD`: the same guard, preview and confirmation as the recovery itself, then
 * exactly the rows it changed put back in one transaction.
 */
async function undoRecoveryCommand(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const dryRun = ctx.flag("dry-run");
  const target = describeTarget(config.databaseUrl);
  // The same guard flags as recover: unattended, the target database must be named too.
  if (!dryRun) checkUnattended(ctx, target, "undo a recovery in the live database", "yes");
  // A record gone from BACKUP_DIR (a lost disk) is read from its off-site copy, checked alike.
  const { path, record, undo } = await loadRecovery(
    ctx.option("undo")!,
    config.backupDir,
    config.backup.age,
    recoveryStore(config),
  );
  if (record.database !== target.database || undo.database !== target.database) {
    throw new ShinkeiError(
      "RECORD_REFUSED",
      `${path} records a recovery of database ${record.database}, not of ${target.database}: nothing was changed`,
      {
        hint: "Point DATABASE_URL at the database that was recovered.",
      },
    );
  }
  // Asked first, or only previewed: run it and roll it back, so rows changed since show before
  // anyone is asked anything. With --yes nobody is asked, and the undo itself checks the same rows.
  // Written as loadRole's role: the live tables' triggers are the app's code (withLoadRole).
  const counts =
    dryRun || !ctx.flag("yes")
      ? await withLoadRole(config.databaseUrl, (writer) => trialUndo(writer, record, undo))
      : plannedCounts(undo);
  if (!ctx.flag("json")) showUndo(io, path, record, counts);
  if (dryRun) {
    if (ctx.flag("json")) json(io, { record: path, id: record.id, tables: counts, undone: false });
    else line(io, "\ndry run: nothing was changed");
    return 0;
  }
  const confirmation =
    (record.scope.kind === "user" || record.scope.kind === "user-id") && record.owner
      ? record.owner
      : "id" in record.scope
        ? record.scope.id
        : record.scope.email;
  if (!ctx.flag("yes")) {
    await typedConfirmation(
      io,
      `Type ${confirmation} to undo recovery ${record.id!.slice(0, 8)} in ${target.database}`,
      confirmation,
    );
  }
  const progress = activity(io, "undoing in one transaction");
  const run = await withLoadRole(config.databaseUrl, (writer) =>
    undoRecovery({ sql: ctx.db, writer, record, undo, wait: ctx.flag("wait") }),
  ).catch((e) => {
    if (e instanceof ShinkeiError && e.code === "COMMIT_UNKNOWN") {
      progress.fail("the undo may have been done: its COMMIT went unanswered");
      throw new ShinkeiError(e.code, e.message, {
        hint:
          `${e.hint} shinkei recover --history says it too: undone, or still applied (then nothing was ` +
          "changed, and the undo can be run again).",
        details: e.details,
        cause: e.cause,
      });
    }
    // undoRecovery throws only with nothing changed (before its transaction, or rolled back).
    progress.fail("undo failed: nothing was changed");
    throw e;
  });
  progress.stop("undone");
  if (ctx.flag("json"))
    return (json(io, { record: path, id: record.id, tables: run.counts, undone: true, applyMs: run.applyMs }), 0);
  const list = (pick: (c: (typeof run.counts)[string]) => number) =>
    Object.entries(run.counts)
      .filter(([, c]) => pick(c) > 0)
      .map(([t, c]) => `${t} ${pick(c)}`)
      .join(", ") || "none";
  line(io);
  line(io, `removed        ${list((c) => c.deleted)}`);
  line(io, `put back       ${list((c) => c.putBack)}`);
  line(io, `brought back   ${list((c) => c.reinserted)}`);
  line(io, `undone in      ${formatDuration(run.applyMs)} (one transaction); a second undo of this record is refused`);
  return 0;
}

/** What a recovery's record already says: given with --undo, they are refused by name. */
const fromTheRecord = [
  "user",
  "user-id",
  "world",
  "story",
  "from",
  "at",
  "revert-changed",
  "into-current-account",
  "restore-account",
  "full-safety-backup",
  "show",
];

export const undo: Subcommand = {
  flag: "undo",
  summary: "undo a recovery: put back exactly the rows it changed",
  options: {
    undo: {
      type: "string",
      value: "RECORD",
      description: "undo a recovery: its record's path, or its id as --history lists it",
    },
    "dry-run": { type: "boolean", description: "show what the undo does and stop" },
    yes: { type: "boolean", short: "y", description: "undo without the typed confirmation (needs --confirm-database)" },
    "confirm-database": confirmDatabaseOption,
    "allow-production": { type: "boolean", description: "run even when SHINKEI_ENV/NODE_ENV is production" },
    wait: { type: "boolean", description: "queue behind a running backup, restore or reset instead of failing" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  refuse: (names) =>
    names.every((n) => fromTheRecord.includes(n))
      ? new ShinkeiError(
          "USAGE",
          `--undo takes its scope and source from the record: drop ${names.map((k) => `--${k}`).join(", ")}`,
        )
      : undefined,
  run: undoRecoveryCommand,
};
