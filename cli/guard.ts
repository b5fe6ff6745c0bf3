import type { Context } from "./command.ts";
import { typedConfirmation } from "./prompts.ts";
import { checkUnattendedConfirmation, refuseProduction } from "../src/reset.ts";
import type { Target } from "../src/db.ts";

export const guardOptions = {
  "dry-run": { type: "boolean" },
  force: { type: "boolean" },
  "confirm-database": { type: "string" },
  "allow-production": { type: "boolean" },
  wait: { type: "boolean" },
} as const;

/**
 * The guard every destructive command passes: production refused, then typed phrases in a
 * terminal, or --force with --confirm-database naming the target without one.
 */
export async function confirmDestructive(ctx: Context, target: Target, what: string, phrases: readonly string[], skipFlag: "force" | "yes" = "force"): Promise<void> {
  refuseProduction(ctx.config, ctx.flag("allow-production"), what);
  const confirmDatabase = ctx.option("confirm-database");
  if (!ctx.io.interactive || ctx.flag(skipFlag)) {
    checkUnattendedConfirmation(target, ctx.flag(skipFlag), confirmDatabase, what, `--${skipFlag}`);
    return;
  }
  for (const [i, phrase] of phrases.entries()) {
    await typedConfirmation(ctx.io, `${i === 0 ? `This will ${what}.` : "Again:"} Type ${phrase} to continue`, phrase);
  }
}
