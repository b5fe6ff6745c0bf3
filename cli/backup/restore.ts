import type { Context, Subcommand } from "../command.ts";
import { line, table, warn } from "../output.ts";
import { activity, note } from "../prompts.ts";
import { confirmDatabaseOption, confirmDestructive, undoCommand } from "../guard.ts";
import { checkUnattendedConfirmation, refuseProduction } from "../../src/guarded/guard.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { tableCounts, mainTables } from "../../src/pg/tables.ts";
import { withMaintenanceLock } from "../../src/pg/lock.ts";
import { obtainBackup } from "../../src/backup/catalog.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { assertVerified, verifyBackup } from "../../src/backup/verify.ts";
import { refuseUntrusted, restoreBackup, type RestoreStep } from "../../src/backup/restore.ts";
import { prepareJudge } from "../../src/backup/judge.ts";

const stepLabels: Record<RestoreStep, string> = {
  verify: "verifying the backup",
  "safety-backup": "taking and verifying a pre-restore safety backup",
  restore: "restoring in one transaction",
  compare: "comparing row counts with the manifest",
};

/** Show what will be replaced, pass the guard, then restore all-or-nothing. */
export async function restore(ctx: Context, file: string | undefined): Promise<number> {
  const { io, config } = ctx;
  prepareJudge(); // loads while the lock is taken and the file verified
  const target = describeTarget(config.databaseUrl);
  const what = `replace everything in ${target.database} with a backup`;
  refuseProduction(config.environment, ctx.flag("allow-production"), what);
  // Skipping the safety backup is for scripts that already hold one, and say exactly which database.
  if (ctx.flag("no-safety-backup"))
    checkUnattendedConfirmation(
      target,
      ctx.flag("yes"),
      ctx.option("confirm-database"),
      `${what} without a safety backup`,
      "--yes",
    );
  const path = await obtainBackup(config.backupDir, file, offsiteStore(config), target, config.backup.age?.manifestKey);

  return withMaintenanceLock(
    ctx.db,
    "restore",
    async (lock) => {
      // Read by the server while the file's manifest is checked.
      const counting = tableCounts(ctx.db);
      counting.catch(() => {}); // awaited below
      const spin = activity(io, "verifying the backup");
      // The checksum is taken by the restore's own read of the file, before anything of it is used.
      const verification = await verifyBackup(path, { quick: true, defer: true, age: config.backup.age });
      spin.stop(
        !verification.ok
          ? "backup failed verification"
          : verification.pending
            ? "manifest checked (the checksum is checked as the file is read)"
            : "backup verified",
      );
      assertVerified(verification);
      const allow = {
        unencrypted: ctx.flag("allow-unencrypted"),
        unsigned: ctx.flag("allow-unsigned"),
        superuser: ctx.flag("allow-superuser"),
      };
      refuseUntrusted(verification, config.backup.age, allow);
      if (!verification.manifest)
        warn(io, `${verification.file} has no manifest: it restores, but its row counts cannot be checked.`);

      const current = await counting;
      const backup = verification.manifest?.counts ?? {};
      note(
        io,
        table([
          ["table", "now", "in backup"],
          ...mainTables.map((t) => [t, current[t] ?? "-", verification.manifest ? (backup[t] ?? "-") : "?"]),
        ]),
        `restore ${verification.file} into ${target.database} on ${target.host}:${target.port}`,
      );

      await confirmDestructive(ctx, target, what, [target.database], "yes");

      const progress = activity(io, "restoring");
      let result: Awaited<ReturnType<typeof restoreBackup>>;
      try {
        result = await restoreBackup({
          sql: ctx.db,
          url: config.databaseUrl,
          dir: config.backupDir,
          path,
          verification,
          safetyBackup: !ctx.flag("no-safety-backup"),
          age: config.backup.age,
          lock,
          allow,
          onStep: (s) => progress.update(stepLabels[s]),
        });
      } catch (e) {
        progress.fail("restore failed");
        throw e;
      }
      progress.stop("restored");
      if (result.safety) line(io, `safety backup  ${result.safety.path} (verified)`);
      line(
        io,
        `restored       ${verification.file} (${formatBytes(verification.sizeBytes)}) ` +
          `in ${formatDuration(result.durationMs)}`,
      );
      line(io, `rows now       ${mainTables.map((t) => `${t} ${result.counts[t] ?? 0}`).join(", ")}`);
      if (result.mismatches.length) {
        throw new ShinkeiError(
          "RESTORE_FAILED",
          `restored, but counts differ from the manifest: ${result.mismatches.join("; ")}`,
        );
      }
      if (verification.manifest) line(io, "counts match the manifest");
      if (result.safety) line(io, `undo with      ${await undoCommand(config, result.safety.path)}`);
      return 0;
    },
    ctx.flag("wait"),
  );
}

export const restoreForm: Subcommand = {
  word: "restore",
  flag: "restore",
  args: { usage: "[F]", max: 1 },
  summary:
    "restore the newest backup of this database on this server (not a safety copy), or F " +
    "(ours, or a stock pg_dump .sql/.sql.gz/.sql.zst/.dump)",
  description: `A restore verifies the file, takes and verifies a pre-restore backup, and loads it in ONE
transaction that nothing in the file can end: the database ends exactly as in the backup, or as it
was (checked). Meta-commands (\\!, \\connect, ...) and transaction control in a file are refused.`,
  options: {
    restore: { type: "boolean", description: "the same as backup restore" },
    "backup-file": { type: "string", value: "F", description: "the file to restore (a path, or a name in BACKUP_DIR)" },
    yes: {
      type: "boolean",
      short: "y",
      description: "restore without the typed confirmation (needs --confirm-database)",
    },
    "confirm-database": confirmDatabaseOption,
    "no-safety-backup": {
      type: "boolean",
      description: "restore without a pre-restore backup (only with --yes --confirm-database)",
    },
    "allow-unencrypted": {
      type: "boolean",
      description: "restore a plain file although this host encrypts its backups",
    },
    "allow-unsigned": {
      type: "boolean",
      description: "restore a file without a manifest although BACKUP_MANIFEST_KEY is set",
    },
    "allow-superuser": {
      type: "boolean",
      description: "run the file's code as a superuser when the database has no other owner (trusted files only)",
    },
    "allow-production": { type: "boolean", description: "restore even when SHINKEI_ENV/NODE_ENV is production" },
    wait: { type: "boolean", description: "queue behind a running backup, restore or reset instead of failing" },
  },
  run: (ctx) => restore(ctx, ctx.option("backup-file") ?? ctx.positionals[1]),
};
