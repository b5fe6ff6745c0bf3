import type { Context, Subcommand } from "../command.ts";
import { line, json } from "../output.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { formatDuration } from "../../src/duration.ts";
import { obtainBackup } from "../../src/backup/catalog.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { runDrill } from "../../src/backup/drill.ts";
import { activity } from "../prompts.ts";
import { cancelOnSignal } from "../signals.ts";

export async function drill(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const path = await obtainBackup(
    config.backupDir,
    ctx.positionals[1],
    offsiteStore(config),
    describeTarget(config.databaseUrl),
    config.backup.age?.manifestKey,
  );
  const spin = activity(io, `restore drill of ${path} into a scratch database`);
  const cancel = cancelOnSignal("the drill");
  try {
    const result = await runDrill({
      path,
      serverUrl: config.backup.drillServerUrl ?? config.databaseUrl,
      age: config.backup.age,
      onScratch: cancel.onScratch,
      signal: cancel.signal,
    }).catch((e) => {
      spin.fail("drill stopped");
      throw e;
    });
    if (result.passed) spin.stop("drill passed");
    else spin.fail("drill failed");
    if (ctx.flag("json")) return (json(io, result), result.passed ? 0 : 1);
    line(
      io,
      `${result.passed ? "✔ passed" : "✖ FAILED"}  ${result.file} restored on ${result.server} ` +
        `in ${formatDuration(result.durationMs)}`,
    );
    for (const d of result.differences) line(io, `  ${d}`);
    for (const n of result.notes) line(io, `  note: ${n}`);
    if (!result.passed)
      throw new ShinkeiError(
        "BACKUP_CORRUPT",
        `the restore drill of ${result.file} failed: ${result.differences.join("; ")}`,
      );
    return 0;
  } finally {
    cancel.dispose();
  }
}

export const drillForm: Subcommand = {
  word: "drill",
  args: { usage: "[F]", max: 1 },
  summary: `restore F (default the newest) into a scratch database and
compare every table's count and content with the manifest`,
  options: { json: { type: "boolean", description: "machine-readable output" } },
  run: drill,
};
