import type { Target } from "./pg/db.ts";
import { ShinkeiError } from "./errors.ts";

/**
 * The rules every destructive operation (reset, restore, migrate down, seed, recover) passes before
 * it touches anything; the prompts that ask in a terminal live in cli/guard.ts.
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
export function checkUnattendedConfirmation(target: Target, confirmed: boolean, confirmDatabase: string | undefined, what: string, flag = "--force") {
  if (!confirmed || confirmDatabase === undefined) {
    throw new ShinkeiError("CONFIRMATION_REQUIRED", `refusing to ${what} without a confirmation`, {
      hint: `Run it in a terminal, or pass ${flag} --confirm-database ${target.database} to run it unattended.`,
    });
  }
  if (confirmDatabase !== target.database) {
    throw new ShinkeiError("CONFIRMATION_MISMATCH", `--confirm-database "${confirmDatabase}" does not name the target database "${target.database}"`, {
      hint: "Nothing was changed.",
    });
  }
}
