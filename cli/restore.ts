import type { Context } from "./command.ts";
import { line, table, warn } from "./output.ts";
import { activity, note, typedConfirmation } from "./prompts.ts";
import { ShinkeiError } from "../src/errors.ts";
import { describeTarget } from "../src/db.ts";
import { formatBytes, formatDuration } from "../src/duration.ts";
import { tableCounts, mainTables } from "../src/state.ts";
import { withMaintenanceLock } from "../src/backup/lock.ts";
import { resolveBackup } from "../src/backup/catalog.ts";
import { offsiteStore } from "../src/backup/stores/index.ts";
import { assertVerified, verifyBackup } from "../src/backup/verify.ts";
import { restoreBackup, type RestoreStep } from "../src/backup/restore.ts";

const stepLabels: Record<RestoreStep, string> = {
  verify: "verifying the backup",
  "safety-backup": "taking a pre-restore safety backup",
  restore: "restoring in one transaction",
  compare: "comparing row counts with the manifest",
};

/** Show what will be replaced, ask, then restore all-or-nothing. */
export async function restore(ctx: Context, file: string | undefined): Promise<number> {
  const { io, config } = ctx;
  const path = await resolveBackup(config.backupDir, file, offsiteStore(config));
  const target = describeTarget(config.databaseUrl);

  return withMaintenanceLock(ctx.db, "restore", async () => {
    const spin = activity(io, "verifying the backup");
    const verification = await verifyBackup(path, { quick: true, age: config.backup.age });
    spin.stop(verification.ok ? "backup verified" : "backup failed verification");
    assertVerified(verification);
    if (!verification.manifest) warn(io, `${verification.file} has no manifest: it restores, but its row counts cannot be checked.`);

    const current = await tableCounts(ctx.db);
    const backup = verification.manifest?.counts ?? {};
    note(io, table([
      ["table", "now", "in backup"],
      ...mainTables.map((t) => [t, current[t] ?? "-", verification.manifest ? backup[t] ?? "-" : "?"]),
    ]), `restore ${verification.file} into ${target.database} on ${target.host}:${target.port}`);

    if (!ctx.flag("yes")) {
      if (!io.interactive) {
        throw new ShinkeiError("REFUSED", "a restore replaces the whole database and needs confirmation", {
          hint: "Run it in a terminal, or pass --yes in scripts.",
        });
      }
      await typedConfirmation(io, `Type the database name (${target.database}) to replace it with this backup`, target.database);
    }

    const progress = activity(io, "restoring");
    let result;
    try {
      result = await restoreBackup({
        sql: ctx.db,
        url: config.databaseUrl,
        dir: config.backupDir,
        path,
        verification,
        safetyBackup: !ctx.flag("no-safety-backup"),
        age: config.backup.age,
        onStep: (s) => progress.update(stepLabels[s]),
      });
    } catch (e) {
      progress.fail("restore failed");
      throw e;
    }
    progress.stop("restored");
    if (result.safety) line(io, `safety backup  ${result.safety.path}`);
    line(io, `restored       ${verification.file} (${formatBytes(verification.sizeBytes)}) in ${formatDuration(result.durationMs)}`);
    line(io, `rows now       ${mainTables.map((t) => `${t} ${result.counts[t] ?? 0}`).join(", ")}`);
    if (result.mismatches.length) {
      throw new ShinkeiError("RESTORE_FAILED", `restored, but counts differ from the manifest: ${result.mismatches.join("; ")}`);
    }
    if (verification.manifest) line(io, "counts match the manifest");
    if (result.safety) line(io, `undo with      shinkei backup --restore --backup-file ${result.safety.path}`);
    return 0;
  }, ctx.flag("wait"));
}
