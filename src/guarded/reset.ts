import type { Sql } from "../pg/db.ts";
import { describeTarget, type Target } from "../pg/db.ts";
import { mainTables, tableCounts } from "../pg/tables.ts";
import { rebuildSchema } from "../migrations/migrate.ts";
import { seedDemo } from "../migrations/seed.ts";
import type { BackupResult } from "../backup/dump.ts";
import { takeSafetyBackup } from "./safety.ts";
import type { AgeConfig } from "../storage/crypt.ts";

/** The three phrases, in order; each must be typed exactly. */
export const resetPhrases = ["DELETE ALL DATA", "YES I AM SURE", "YES"] as const;

export type ResetPlan = { target: Target; counts: Record<string, number> };

/** What a reset would delete: shown before anything is asked. */
export async function resetPlan(sql: Sql, url: string): Promise<ResetPlan> {
  const all = await tableCounts(sql);
  return { target: describeTarget(url), counts: Object.fromEntries(mainTables.map((t) => [t, all[t] ?? 0])) };
}

export type ResetResult = { safety: BackupResult; counts: Record<string, number> };

/**
 * Take and verify a pre-reset backup, then drop, rebuild and (optionally) seed in ONE transaction:
 * if anything fails, nothing was deleted. The caller holds the maintenance lock.
 */
export async function performReset(options: {
  sql: Sql;
  url: string;
  dir: string;
  seed: boolean;
  hashing?: { memoryCost: number; timeCost: number };
  age?: AgeConfig;
}): Promise<ResetResult> {
  const { sql, url, dir } = options;
  const safety = await takeSafetyBackup({ sql, url, dir, reason: "pre-reset", age: options.age });
  await sql.begin(async (tx) => {
    await rebuildSchema(tx);
    if (options.seed) await seedDemo(tx, options.hashing);
  });
  const all = await tableCounts(sql);
  return { safety, counts: Object.fromEntries(mainTables.map((t) => [t, all[t] ?? 0])) };
}
