import { ShinkeiError } from "../errors.ts";
import type { LockHandle, Sql } from "../pg/db.ts";
import type { BackupResult } from "../backup/dump.ts";
import type { AgeConfig } from "../storage/crypt.ts";
import { migrations, type Migration } from "../migrations/index.ts";
import { migrateDown, migrationStatus } from "../migrations/migrate.ts";
import { takeSafetyBackup } from "./safety.ts";

/**
 * The guarded `migrate down`: a verified pre-migrate backup, then the newest migration undone in
 * one transaction, committed only while `lock` (the maintenance lock the caller holds) is still
 * held. The caller passed the guard (src/guarded/guard.ts). It throws only with nothing undone;
 * once the undo may have committed it returns, with the safety backup: a COMMIT in doubt as `inDoubt`.
 */
export async function undoNewestMigration(options: {
  sql: Sql;
  /** Where the down step runs (withLoadRole): the app's tables are its code's. `sql` when not given. */
  writer?: Sql;
  url: string;
  dir: string;
  age?: AgeConfig;
  /** The step shown and confirmed: under the lock it must still be the newest, or nothing is done. */
  expected?: { version: number; name: string };
  lock?: LockHandle;
}): Promise<{ safety: BackupResult; undone: Migration; inDoubt?: ShinkeiError }> {
  const { expected } = options;
  const newest = (await migrationStatus(options.sql)).applied.at(-1);
  if (expected) {
    if (newest?.version !== expected.version) {
      throw new ShinkeiError(
        "MIGRATION_CHANGED",
        `migration ${expected.version} (${expected.name}) is no longer the newest applied ` +
          `(${newest ? `now ${newest.version} (${newest.name})` : "none is"}): another command changed it meanwhile`,
        { hint: "Nothing was changed. Run migrate down again to see and confirm the step it would undo now." },
      );
    }
  }
  const safety = await takeSafetyBackup({
    sql: options.sql,
    url: options.url,
    dir: options.dir,
    reason: "pre-migrate",
    age: options.age,
  });
  let undone: Migration | null;
  try {
    undone = await migrateDown(options.writer ?? options.sql, undefined, { lock: options.lock });
  } catch (e) {
    // The step it was undoing: the newest applied, under the lock (checked above when expected).
    const step = migrations.find((m) => m.version === newest?.version);
    if (e instanceof ShinkeiError && e.code === "COMMIT_UNKNOWN" && step) return { safety, undone: step, inDoubt: e };
    throw e;
  }
  if (!undone) throw new ShinkeiError("NOTHING_TO_UNDO", "no migration is applied: nothing to undo");
  return { safety, undone };
}
