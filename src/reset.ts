import type { Sql } from "./db.ts";
import { describeTarget, type Target } from "./db.ts";
import type { Config } from "./config.ts";
import { ShinkeiError } from "./errors.ts";
import { mainTables, tableCounts } from "./state.ts";
import { rebuildSchema } from "./migrations/migrate.ts";
import { seedDemo } from "./seed.ts";
import { createBackup, type BackupResult } from "./backup/dump.ts";
import { verifyFreshBackup } from "./backup/verify.ts";
import type { AgeConfig } from "./backup/crypt.ts";

/** The three phrases, in order; each must be typed exactly. */
export const resetPhrases = ["DELETE ALL DATA", "YES I AM SURE", "YES"] as const;

export type ResetPlan = { target: Target; counts: Record<string, number> };

/** What a reset would delete: shown before anything is asked. */
export async function resetPlan(sql: Sql, url: string): Promise<ResetPlan> {
  const all = await tableCounts(sql);
  return { target: describeTarget(url), counts: Object.fromEntries(mainTables.map((t) => [t, all[t] ?? 0])) };
}

/** As Rails guards db:reset: production is refused unless the caller says otherwise. */
export function refuseProduction(config: Config, allowProduction: boolean, what: string) {
  if (config.environment === "production" && !allowProduction) {
    throw new ShinkeiError("REFUSED", `refusing to ${what}: SHINKEI_ENV/NODE_ENV is production`, {
      hint: "If you really mean it, add --allow-production.",
    });
  }
}

/** Without a terminal there is nobody to ask: both flags, and the right name, are the confirmation. */
export function checkUnattendedConfirmation(target: Target, force: boolean, confirmDatabase: string | undefined, what: string, flag = "--force") {
  if (!force || confirmDatabase === undefined) {
    throw new ShinkeiError("REFUSED", `refusing to ${what} without a terminal to confirm in`, {
      hint: `Pass ${flag} --confirm-database ${target.database} to run it unattended.`,
    });
  }
  if (confirmDatabase !== target.database) {
    throw new ShinkeiError("REFUSED", `--confirm-database "${confirmDatabase}" does not name the target database "${target.database}"`);
  }
}

export type ResetResult = { safety: BackupResult; counts: Record<string, number> };

/**
 * Take and verify a pre-reset backup, then drop, rebuild and (optionally) seed in ONE transaction:
 * if anything fails, nothing was deleted. The caller holds the maintenance lock.
 */
export async function performReset(options: { sql: Sql; url: string; dir: string; seed: boolean; hashing?: { memoryCost: number; timeCost: number }; age?: AgeConfig }): Promise<ResetResult> {
  const { sql, url, dir } = options;
  const safety = await createBackup({ sql, url, dir, reason: "pre-reset", age: options.age });
  await verifyFreshBackup(safety.path, options.age);
  await sql.begin(async (tx) => {
    await rebuildSchema(tx);
    if (options.seed) await seedDemo(tx, options.hashing);
  });
  const all = await tableCounts(sql);
  return { safety, counts: Object.fromEntries(mainTables.map((t) => [t, all[t] ?? 0])) };
}
