import { withAdvisoryLock, type Sql } from "../db.ts";

/**
 * Backup, restore and reset of one database never overlap: they share this advisory lock.
 * Inner steps (the safety backup inside a restore) run under the caller's hold, not a new one.
 */
export function withMaintenanceLock<T>(sql: Sql, what: string, fn: () => Promise<T>, wait = false): Promise<T> {
  return withAdvisoryLock(sql, "maintenance", fn, { wait, what: `backup, restore or reset (${what})` });
}
