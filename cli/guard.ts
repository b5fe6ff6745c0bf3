import type { Context, OptionSpec, Options } from "./command.ts";
import { typedConfirmation } from "./prompts.ts";
import { checkUnattendedConfirmation, refuseProduction } from "../src/guarded/guard.ts";
import { describeTarget, type Target } from "../src/pg/db.ts";
import { superuserOnly } from "../src/backup/loadrole.ts";

/** The guard's options for reset and migrate down (each command words --dry-run and --wait its own way). */
export const guardOptions = {
  force: { type: "boolean", description: "run without a terminal (needs --confirm-database too)" },
  "confirm-database": {
    type: "string",
    value: "NAME",
    description: "the target database's name, required with --force",
  },
  "allow-production": { type: "boolean", description: "run even when SHINKEI_ENV/NODE_ENV is production" },
} satisfies Options;

/** --confirm-database for the commands whose skip flag is --yes (restore, recover, pitr restore --apply). */
export const confirmDatabaseOption = {
  type: "string",
  value: "N",
  description: "the target database's name, required with --yes and without a terminal",
} satisfies OptionSpec;

/**
 * The guard every destructive command passes (reset, restore, migrate down): production refused,
 * then typed phrases in a terminal; without one, or with the command's skip flag (--force, or
 * restore's --yes), --confirm-database must name the target.
 */
export async function confirmDestructive(
  ctx: Context,
  target: Target,
  what: string,
  phrases: readonly string[],
  skipFlag: "force" | "yes" = "force",
): Promise<void> {
  if (checkUnattended(ctx, target, what, skipFlag)) return;
  for (const [i, phrase] of phrases.entries()) {
    await typedConfirmation(ctx.io, `${i === 0 ? `This will ${what}.` : "Again:"} Type ${phrase} to continue`, phrase);
  }
}

/**
 * The guard's checks that need no answer: production refused; without a terminal, or with the skip
 * flag, --confirm-database must name the target. True when it ran unattended (nothing left to ask).
 * Recover calls it before its long load, so a script without --yes finds out at once.
 */
export function checkUnattended(
  ctx: Context,
  target: Target,
  what: string,
  skipFlag: "force" | "yes" = "force",
): boolean {
  refuseProduction(ctx.config.environment, ctx.flag("allow-production"), what);
  if (ctx.io.interactive && !ctx.flag(skipFlag)) return false;
  checkUnattendedConfirmation(target, ctx.flag(skipFlag), ctx.option("confirm-database"), what, `--${skipFlag}`);
  return true;
}

/**
 * The command that puts a safety backup back, as printed after a destructive step: runnable as
 * printed (unattended, so it names the database; in production it needs --allow-production too,
 * which the operator just passed to get here). Where only a superuser owns the database (the local
 * default), the restore would refuse to load without --allow-superuser; the safety backup is the
 * one this command just wrote and checked, so the line carries the flag.
 */
export async function undoCommand(config: { databaseUrl: string; environment: string }, path: string): Promise<string> {
  const production = config.environment === "production" ? " --allow-production" : "";
  const superuser = (await superuserOnly(config.databaseUrl)) ? " --allow-superuser" : "";
  return (
    `shinkei backup --restore --backup-file ${path} --yes ` +
    `--confirm-database ${describeTarget(config.databaseUrl).database}${production}${superuser}`
  );
}
