import type { Command, Context } from "./command.ts";
import { line, table, warn } from "./output.ts";
import { activity, note } from "./prompts.ts";
import { confirmDestructive, guardOptions, undoCommand } from "./guard.ts";
import { performReset, resetPhrases, resetPlan } from "../src/guarded/reset.ts";
import { refuseProduction } from "../src/guarded/guard.ts";
import { withMaintenanceLock } from "../src/pg/lock.ts";
import { ShinkeiError } from "../src/errors.ts";
import { mainTables } from "../src/pg/tables.ts";

export const resetCommand: Command = {
  name: "reset",
  description: `Shows the target database and what will be deleted, asks you to type DELETE ALL DATA, then
YES I AM SURE, then YES (exactly), takes and verifies a pre-reset backup, then recreates the
schema and loads the demo data, all in one transaction. Ends with the command that undoes it.

Ctrl-C at any prompt exits 130 and a mistyped phrase exits 1; neither changes anything.`,
  subcommands: [
    {
      default: true,
      summary: "delete everything and reseed, behind three typed confirmations and a backup",
      options: {
        "dry-run": { type: "boolean", description: "show what would be deleted; change nothing" },
        "no-seed": { type: "boolean", description: "leave the new schema empty" },
        ...guardOptions,
        wait: { type: "boolean", description: "queue behind a running backup or restore instead of failing" },
      },
      run: reset,
    },
  ],
};

async function reset(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  refuseProduction(config.environment, ctx.flag("allow-production"), "reset the database");
  const plan = await resetPlan(ctx.db, config.databaseUrl);
  const { database, host, port } = plan.target;
  note(
    io,
    table([["table", "rows"], ...mainTables.map((t) => [t, plan.counts[t] ?? 0])]),
    `reset deletes ALL data in ${database} on ${host}:${port}`,
  );
  if (ctx.flag("dry-run")) {
    line(io, "dry run: nothing was changed");
    return 0;
  }
  await confirmDestructive(ctx, plan.target, `delete all data in ${database}`, resetPhrases);
  const spin = activity(io, "taking a pre-reset backup, then resetting");
  const result = await withMaintenanceLock(
    ctx.db,
    "reset",
    (lock) =>
      performReset({
        sql: ctx.db,
        url: config.databaseUrl,
        dir: config.backupDir,
        seed: !ctx.flag("no-seed"),
        hashing: config.hashing,
        age: config.backup.age,
        lock,
      }),
    ctx.flag("wait"),
  ).catch((e) => {
    // performReset throws only while nothing was deleted (before its transaction, or rolled back).
    spin.fail("reset failed: nothing was deleted");
    throw e;
  });
  const undo = `undo with      ${await undoCommand(config, result.safety.path)}`;
  if (result.inDoubt) {
    const e = result.inDoubt;
    spin.fail("reset may have been done: its COMMIT went unanswered");
    line(io, `safety backup  ${result.safety.path} (verified)`);
    line(io, undo);
    throw new ShinkeiError(e.code, e.message, {
      hint:
        `${e.hint} shinkei status shows it too: the demo data (or no rows, with --no-seed) when the reset was ` +
        "done, the old rows when it was not. If it was done, the undo line above puts the old data back.",
      details: e.details,
      cause: e.cause,
    });
  }
  spin.stop("reset done");
  line(io, `safety backup  ${result.safety.path} (verified)`);
  const counts = result.counts;
  if (counts) line(io, `rows now       ${mainTables.map((t) => `${t} ${counts[t]}`).join(", ")}`);
  else warn(io, `rows now       could not be read after the reset committed: ${result.countsFailed}`);
  line(io, undo);
  return 0;
}
