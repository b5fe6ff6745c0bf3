import type { Context, Subcommand } from "../command.ts";
import { line } from "../output.ts";
import { note } from "../prompts.ts";
import { confirmDestructive, guardOptions, undoCommand } from "../guard.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { migrationStatus } from "../../src/migrations/migrate.ts";
import { undoNewestMigration } from "../../src/guarded/migrate-down.ts";
import { migrations } from "../../src/migrations/index.ts";
import { withMaintenanceLock } from "../../src/pg/lock.ts";
import { withLoadRole } from "../../src/backup/loadrole.ts";

/** One step back, guarded like reset: show what it drops, confirm, back up and verify, then undo. */
async function runMigrateDown(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const status = await migrationStatus(ctx.db);
  const last = status.applied.at(-1);
  if (!last) throw new ShinkeiError("NOTHING_TO_UNDO", "no migration is applied: nothing to undo");
  const m = migrations.find((x) => x.version === last.version);
  const target = describeTarget(config.databaseUrl);
  note(
    io,
    (m?.down ?? "(no down step)").trim(),
    `migrate down undoes ${String(last.version).padStart(4, "0")} ${last.name} in ${target.database} ` +
      `on ${target.host}:${target.port}`,
  );
  if (ctx.flag("dry-run")) {
    line(io, "dry run: nothing was changed");
    return 0;
  }
  await confirmDestructive(ctx, target, `undo migration ${last.version} (${last.name}) in ${target.database}`, [
    target.database,
  ]);
  return withMaintenanceLock(
    ctx.db,
    "migrate down",
    async (lock) => {
      // The down step as the load's role (withLoadRole), as migrate's up steps.
      const { safety, undone, inDoubt } = await withLoadRole(config.databaseUrl, (writer) =>
        undoNewestMigration({
          sql: ctx.db,
          writer,
          url: config.databaseUrl,
          dir: config.backupDir,
          age: config.backup.age,
          expected: last,
          lock,
        }),
      );
      const step = `${String(undone.version).padStart(4, "0")} ${undone.name}`;
      line(io, `safety backup  ${safety.path} (verified)`);
      line(io, `${inDoubt ? "maybe undone  " : "undone        "} ${step}`);
      line(io, `undo with      ${await undoCommand(config, safety.path)}`);
      if (inDoubt)
        throw new ShinkeiError(inDoubt.code, inDoubt.message, {
          hint:
            `${inDoubt.hint} shinkei migrate status says it too: ${undone.version} applied (nothing was ` +
            "changed) or pending (it was undone; the undo line above puts it back).",
          details: inDoubt.details,
          cause: inDoubt.cause,
        });
      return 0;
    },
    ctx.flag("wait"),
  );
}

export const down: Subcommand = {
  word: "down",
  summary: `undo the newest migration: shows what it drops, asks you to type
the database name, takes and verifies a backup first`,
  options: {
    "dry-run": { type: "boolean", description: "show what the step drops; change nothing" },
    force: { ...guardOptions.force, description: "run without a terminal (with --confirm-database NAME)" },
    "confirm-database": guardOptions["confirm-database"],
    "allow-production": guardOptions["allow-production"],
    wait: { type: "boolean", description: "queue behind a running backup, restore or reset" },
  },
  run: runMigrateDown,
};
