import { ShinkeiError } from "../errors.ts";
import type { Sql } from "../pg/db.ts";
import type { BackupResult } from "../backup/dump.ts";
import type { AgeConfig } from "../storage/crypt.ts";
import type { Migration } from "../migrations/index.ts";
import { migrateDown, migrationStatus } from "../migrations/migrate.ts";
import { takeSafetyBackup } from "./safety.ts";

/**
 * The guarded `migrate down`: a verified pre-migrate backup, then the newest migration undone in
 * one transaction. The caller holds the maintenance lock and passed the guard (src/guarded/guard.ts).
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
}): Promise<{ safety: BackupResult; undone: Migration }> {
  const { expected } = options;
  if (expected) {
    const newest = (await migrationStatus(options.sql)).applied.at(-1);
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
  const undone = await migrateDown(options.writer ?? options.sql);
  if (!undone) throw new ShinkeiError("NOTHING_TO_UNDO", "no migration is applied: nothing to undo");
  return { safety, undone };
}
