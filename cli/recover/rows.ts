import type { Context, Subcommand } from "../command.ts";
import { json, line, warn } from "../output.ts";
import { activity, typedConfirmation } from "../prompts.ts";
import { previewJson, showAccounts, showApplied, showPreview } from "./view.ts";
import { checkUnattended, confirmDatabaseOption } from "../guard.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { withPointInTimeSource, withRecoverySource, type Source, type SourceStep } from "../../src/recover/source.ts";
import { listBaseBackups } from "../../src/wal/base.ts";
import { buildPlan, type AccountMode, type Scope } from "../../src/recover/plan.ts";
import { recover as applyRecovery, trialApply } from "../../src/recover/apply.ts";
import { withLoadRole } from "../../src/backup/loadrole.ts";
import { recordFor, writeRecovery } from "../../src/recover/record.ts";
import { copyRecoveryOffsite } from "../../src/recover/stores.ts";
import { cancelOnSignal } from "../signals.ts";

/** `shinkei recover --user EMAIL ...`: one user's (or world's, or story's) rows back from a backup. */
export const rows: Subcommand = {
  default: true,
  summary: "bring back one user's (or world's, or story's) rows from a backup, leaving everyone else's as they are",
  description: `Loads the backup into a scratch database on the same server, walks the foreign keys down from the
user (users -> worlds -> stories -> story_beats, and any table a migration adds), and shows per
table the rows missing now, the rows that changed, and the rows created since. Then, after typing
the user's email (or the id, for --world/--story), applies in ONE transaction: missing rows come
back, rows created since are always kept, sessions never come back. Any conflict stops it with
nothing applied. Before the commit it writes its record and a safety copy of exactly the rows it
changed beside it in BACKUP_DIR; --undo with that record puts those rows back, and only those.`,
  options: {
    user: { type: "string", oneOf: "scope", value: "EMAIL", description: "whose rows: the user with this email" },
    "user-id": { type: "string", oneOf: "scope", value: "ID", description: "whose rows: the user with this id" },
    world: { type: "string", oneOf: "scope", value: "ID", description: "the rows of this world" },
    story: { type: "string", oneOf: "scope", value: "ID", description: "the rows of this story" },
    from: {
      type: "string",
      value: "FILE|latest",
      description: `the backup to recover from (a path, a name in BACKUP_DIR or off-site;
default latest: the newest that is not a safety copy)`,
    },
    at: {
      type: "string",
      value: "TIME",
      description: `the state at a moment instead of a backup (an ISO time with zone, a local
time in BACKUP_TIMEZONE, or -5m): recovered from the WAL archive into a
scratch instance, as shinkei pitr restore does`,
    },
    "revert-changed": {
      type: "boolean",
      description: `also put rows that changed since the backup back to the backup's version
(never the account's email, password or verification)`,
    },
    "into-current-account": {
      type: "boolean",
      description: "the email now belongs to a newer account: give it the recovered worlds",
    },
    "restore-account": {
      type: "boolean",
      description: "the email now belongs to a newer, empty account: remove it, bring the old back",
    },
    show: { type: "boolean", description: "list the rows themselves, not only the counts" },
    "dry-run": { type: "boolean", description: "show the preview and stop" },
    yes: {
      type: "boolean",
      short: "y",
      description: "apply without the typed confirmation (needs --confirm-database)",
    },
    "confirm-database": confirmDatabaseOption,
    "allow-unencrypted": {
      type: "boolean",
      description: "recover from a plain file although this host encrypts its backups",
    },
    "allow-unsigned": {
      type: "boolean",
      description: "recover from a file without a manifest although BACKUP_MANIFEST_KEY is set",
    },
    "allow-production": { type: "boolean", description: "run even when SHINKEI_ENV/NODE_ENV is production" },
    wait: {
      type: "boolean",
      description: "queue behind a running backup, restore, reset or recover instead of failing",
    },
    "full-safety-backup": {
      type: "boolean",
      description: `also take a verified full pre-recover backup first (costs a dump of
the whole database; the rows' own safety copy is always written)`,
    },
    json: { type: "boolean", description: "machine-readable output" },
  },
  run: recover,
};

function scopeOf(ctx: Context): Scope {
  const given = (["user", "user-id", "world", "story"] as const).filter((k) => ctx.option(k) !== undefined);
  if (given.length !== 1)
    throw new ShinkeiError(
      "USAGE",
      given.length
        ? `choose one of ${given.map((g) => `--${g}`).join(", ")}`
        : "say whose rows to recover: --user EMAIL, --user-id ID, --world ID or --story ID",
    );
  const kind = given[0]!;
  const value = ctx.option(kind)!;
  return kind === "user" ? { kind, email: value } : { kind, id: value };
}

async function recover(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const at = ctx.option("at");
  if (at !== undefined && ctx.option("from") !== undefined)
    throw new ShinkeiError("USAGE", "choose one source: --from FILE|latest or --at TIME");
  if (at !== undefined && config.wal.archive !== "stream" && (await listBaseBackups(config.backupDir)).length === 0) {
    throw new ShinkeiError(
      "PITR_UNAVAILABLE",
      `--at ${at} needs the WAL archive (WAL_ARCHIVE=stream) and a base backup, and this host has neither`,
      {
        hint: "Recover from a backup instead: --from FILE or --from latest (see shinkei backup --list).",
      },
    );
  }
  const scope = scopeOf(ctx);
  if (ctx.flag("into-current-account") && ctx.flag("restore-account"))
    throw new ShinkeiError("USAGE", "choose one of --into-current-account and --restore-account");
  const mode: AccountMode | undefined = ctx.flag("into-current-account")
    ? "into-current-account"
    : ctx.flag("restore-account")
      ? "restore-account"
      : undefined;
  const dryRun = ctx.flag("dry-run");
  const target = describeTarget(config.databaseUrl);
  // Decided before the long load: a script without --yes would only find out after it. As restore
  // and reset: without the typed confirmation, the flag alone is not enough; the target database
  // must be named too, so a script aimed at the wrong server stops.
  if (!dryRun) checkUnattended(ctx, target, "recover rows into the live database", "yes");
  const revertChanged = ctx.flag("revert-changed");

  const cancel = cancelOnSignal("the recovery");
  const spin = activity(io, "finding the backup");
  let compared = false;
  try {
    const onStep = (s: SourceStep) => {
      if (s.step === "verify") spin.update(`verifying ${s.file}`);
      if (s.step === "load")
        spin.update(
          `loading the backup into a scratch database (most of the time goes here): ${formatBytes(s.bytes ?? 0)} read`,
        );
      if (s.step === "recover")
        spin.update(`recovering a scratch instance to ${at} (most of the time goes here): ${s.message}`);
      if (s.step === "migrate") spin.update("migrating the scratch copy to the live schema");
    };
    // The source: a backup loaded into a scratch database, or the state at a moment (--at)
    // recovered into a scratch instance.
    const withSource = <T>(fn: (source: Source) => Promise<T>) =>
      at !== undefined
        ? withPointInTimeSource({ config, at, onStep, onScratch: cancel.onScratch, signal: cancel.signal }, fn)
        : withRecoverySource(
            {
              from: ctx.option("from"),
              dir: config.backupDir,
              offsite: offsiteStore(config),
              databaseUrl: config.databaseUrl,
              age: config.backup.age,
              onScratch: cancel.onScratch,
              onStep,
              allow: { unencrypted: ctx.flag("allow-unencrypted"), unsigned: ctx.flag("allow-unsigned") },
              wait: ctx.flag("wait"),
            },
            fn,
          );
    return await withSource(async (source) => {
      spin.update("comparing with the live database");
      const plan = await buildPlan(ctx.db, source.url, scope, source.file, mode);
      spin.stop(`compared ${source.file} with ${target.database}`);
      compared = true;
      const preview = previewJson(plan, source.file);
      if (plan.replaced && !plan.mode) {
        if (ctx.flag("json")) json(io, preview);
        else {
          showAccounts(io, plan.replaced);
          for (const n of plan.notes) line(io, `note       ${n}`);
        }
        throw new ShinkeiError(
          "ACCOUNT_REPLACED",
          `${plan.owner} now belongs to a different, newer account than in ${source.file}: nothing was changed`,
          {
            hint:
              "Pass --into-current-account to give the current account the recovered worlds, or " +
              "--restore-account to bring the old account back (only when the new one owns no data).",
          },
        );
      }
      if (!ctx.flag("json")) showPreview(io, plan, source.file, source.loadMs, ctx.flag("show"));
      const changed = plan.tables.reduce((n, d) => n + d.changed.length, 0);
      const todo =
        plan.tables.reduce((n, d) => n + d.missing.length + (revertChanged ? d.changed.length : 0), 0) +
        (plan.removeAccount ? 1 : 0);
      // Run the apply and roll it back: a conflict shows now, before anyone is asked anything.
      // Written as loadRole's role: the live tables' triggers are the app's code (withLoadRole).
      if (todo) await withLoadRole(config.databaseUrl, (writer) => trialApply(writer, plan, revertChanged));
      if (!todo || dryRun) {
        if (ctx.flag("json")) json(io, { ...preview, loadMs: source.loadMs, applied: null });
        else
          line(
            io,
            todo
              ? "\ndry run: nothing was changed"
              : "\nnothing to recover: every row of the backup in this scope is here" +
                  (changed && !revertChanged ? ` (${changed} changed since: --revert-changed puts them back)` : ""),
          );
        return 0;
      }
      if (!ctx.flag("yes")) {
        await typedConfirmation(
          io,
          `Type ${plan.confirmation} to bring these rows back into ${target.database}`,
          plan.confirmation,
        );
      }
      const progress = activity(io, "applying in one transaction");
      const id = crypto.randomUUID();
      // The record, once written (before the commit): what a COMMIT in doubt points at.
      let written: string | undefined;
      const undoLine = (path: string) =>
        `undo with      shinkei recover --undo ${path} --yes ` +
        `--confirm-database ${target.database}${config.environment === "production" ? " --allow-production" : ""}`;
      const run = await withLoadRole(config.databaseUrl, (writer) =>
        applyRecovery({
          sql: ctx.db,
          writer,
          url: config.databaseUrl,
          dir: config.backupDir,
          plan,
          revertChanged,
          age: config.backup.age,
          wait: ctx.flag("wait"),
          fullSafetyBackup: ctx.flag("full-safety-backup"),
          onStep: (s) =>
            progress.update(
              s === "apply"
                ? "applying in one transaction"
                : "taking a full pre-recover safety backup (--full-safety-backup)",
            ),
          // Inside the transaction, before its commit: a committed recovery always has its undo on disk.
          save: async (applied, touched, safety) => {
            const record = recordFor({
              id,
              plan,
              applied,
              source: source.file,
              database: target.database,
              host: target.host,
              port: target.port,
              safetyBackup: safety?.path,
              revertChanged,
              env: io.env,
            });
            const saved = await writeRecovery(
              config.backupDir,
              record,
              { undoVersion: 1, id, database: target.database, ...touched },
              config.backup.age,
            );
            written = saved.path;
            return { id, ...saved };
          },
        }),
      ).catch((e) => {
        if (e instanceof ShinkeiError && e.code === "COMMIT_UNKNOWN") {
          progress.fail("recover may have been applied: its COMMIT went unanswered");
          if (written) {
            line(io, `record         ${written}`);
            line(io, undoLine(written));
          }
          throw new ShinkeiError(e.code, e.message, {
            hint:
              `${e.hint} shinkei recover --history says it too: applied, or not recorded here (then nothing ` +
              "was). If it was applied, the undo line above takes it back; it refuses a recovery that never committed.",
            details: e.details,
            cause: e.cause,
          });
        }
        // applyRecovery throws only with nothing applied (before its transaction, or rolled back).
        progress.fail("recover failed: nothing was applied");
        throw e;
      });
      progress.stop("recovered");
      const { record, path: recordPath, undoPath } = run.saved;
      // After the commit: a failed copy leaves the recovery and its local undo as they are.
      const offsite = await copyRecoveryOffsite(config, recordPath);
      if (ctx.flag("json"))
        return (
          json(io, {
            ...preview,
            loadMs: source.loadMs,
            applyMs: run.applyMs,
            safetyMs: run.safetyMs,
            applied: record,
            record: recordPath,
            offsiteResult: offsite ?? "not configured",
          }),
          0
        );
      line(io);
      if (run.safety) line(io, `safety backup  ${run.safety.path} (verified)`);
      line(
        io,
        `safety copy    ${undoPath} (the rows it ` +
          `changed${record.undo?.encryption ? "; encrypted" : ""}${record.signature ? "; its record signed" : ""})`,
      );
      showApplied(io, run.applied);
      line(io, `applied in     ${formatDuration(run.applyMs)} (one transaction)`);
      line(io, "checked        counts and digests of the recovered rows match the backup");
      line(io, `record         ${recordPath}`);
      if (offsite) (offsite.startsWith("FAILED") ? warn : line)(io, `off-site       ${offsite}`);
      if (plan.scope.kind === "user" || plan.scope.kind === "user-id")
        line(io, "sessions       not restored: the user signs in again");
      line(io, undoLine(recordPath));
      return 0;
    });
  } catch (e) {
    if (!compared) spin.fail("recover stopped: nothing was changed");
    // A COMMIT in doubt is no cancellation with nothing applied, whatever signal came meanwhile.
    if (cancel.signal.aborted && !(e instanceof ShinkeiError && e.code === "COMMIT_UNKNOWN"))
      throw new ShinkeiError(
        "CANCELLED",
        `recover cancelled: nothing was applied, and its ` +
          `scratch ${at === undefined ? "database was dropped" : "instance was removed"}`,
      );
    throw e;
  } finally {
    cancel.dispose();
  }
}
