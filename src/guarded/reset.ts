import type { LockHandle, Sql } from "../pg/db.ts";
import { describeTarget, explainDbError, type Target } from "../pg/db.ts";
import { checkedCommit } from "../pg/transaction.ts";
import { ShinkeiError } from "../errors.ts";
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

export type ResetResult = {
  safety: BackupResult;
  /** COMMIT went unanswered and PostgreSQL could not say whether it took effect: the reset may be done. */
  inDoubt?: ShinkeiError;
  /** The rows after the reset; absent when they could not be read (`countsFailed` says why). */
  counts?: Record<string, number>;
  countsFailed?: string;
};

/**
 * Take and verify a pre-reset backup, then drop, rebuild and (optionally) seed in ONE transaction,
 * committed only while `lock` (the maintenance lock the caller holds) is still held. It throws only
 * when nothing was deleted: before the transaction, or with it rolled back (checkedCommit says
 * which errors those are). Once it may have committed it returns, with the safety backup: a COMMIT
 * in doubt as `inDoubt`, rows it could not count afterwards as `countsFailed`.
 */
export async function performReset(options: {
  sql: Sql;
  url: string;
  dir: string;
  seed: boolean;
  hashing?: { memoryCost: number; timeCost: number };
  age?: AgeConfig;
  lock?: LockHandle;
}): Promise<ResetResult> {
  const { sql, url, dir } = options;
  const safety = await takeSafetyBackup({ sql, url, dir, reason: "pre-reset", age: options.age });
  try {
    await checkedCommit(
      sql,
      async (tx) => {
        await rebuildSchema(tx);
        if (options.seed) await seedDemo(tx, options.hashing);
      },
      { what: "reset", lock: options.lock },
    );
  } catch (e) {
    if (e instanceof ShinkeiError && e.code === "COMMIT_UNKNOWN") return { safety, inDoubt: e };
    throw e;
  }
  // Committed: whatever fails from here, the reset is done and its safety backup is the way back.
  try {
    const all = await tableCounts(sql);
    return { safety, counts: Object.fromEntries(mainTables.map((t) => [t, all[t] ?? 0])) };
  } catch (e) {
    const explained = explainDbError(e, url) as Error;
    return { safety, countsFailed: explained?.message ?? String(explained) };
  }
}
