import type { Target } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";

/**
 * The two rules destructive operations pass before they touch anything, and who passes which:
 * - reset, restore, migrate down and pitr restore --apply: both, through confirmDestructive in
 *   cli/guard.ts, which also asks for the typed phrase in a terminal;
 * - recover and recover --undo: both, only when they write (not with --dry-run), and the
 *   unattended check only with --yes or without a terminal; recover asks its own typed
 *   confirmation (cli/recover/rows.ts) after showing the plan;
 * - seed: refuseProduction only (it adds demo rows and deletes nothing).
 */

/** As Rails guards db:reset: production is refused unless the caller says otherwise. */
export function refuseProduction(environment: string, allowProduction: boolean, what: string) {
  if (environment === "production" && !allowProduction) {
    throw new ShinkeiError("PRODUCTION_REFUSED", `refusing to ${what}: SHINKEI_ENV/NODE_ENV is production`, {
      hint: "If you really mean it, add --allow-production.",
    });
  }
}

/**
 * Without a typed confirmation (no terminal, or --force/--yes), the flag alone is not enough: the
 * target database's name must be given too, so a script aimed at the wrong server stops.
 */
export function checkUnattendedConfirmation(
  target: Target,
  confirmed: boolean,
  confirmDatabase: string | undefined,
  what: string,
  flag = "--force",
) {
  if (!confirmed || confirmDatabase === undefined) {
    throw new ShinkeiError("CONFIRMATION_REQUIRED", `refusing to ${what} without a confirmation`, {
      hint: `Run it in a terminal, or pass ${flag} --confirm-database ${target.database} to run it unattended.`,
    });
  }
  if (confirmDatabase !== target.database) {
    throw new ShinkeiError(
      "CONFIRMATION_MISMATCH",
      `--confirm-database "${confirmDatabase}" does not name the target database "${target.database}"`,
      {
        hint: "Nothing was changed.",
      },
    );
  }
}
