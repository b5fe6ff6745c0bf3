import { withAdvisoryLock, type LockHandle, type Sql } from "./db.ts";

/**
 * Backup, restore, reset, migrations and retention of one database never overlap: they share this
 * advisory lock. Inner steps (the safety backup inside a restore) run under the caller's hold.
 */
export function withMaintenanceLock<T>(
  sql: Sql,
  what: string,
  fn: (lock: LockHandle) => Promise<T>,
  wait = false,
): Promise<T> {
  return withAdvisoryLock(sql, "maintenance", fn, { wait, what });
}
