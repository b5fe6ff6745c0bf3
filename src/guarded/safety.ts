import { createBackup, type BackupOptions, type BackupResult } from "../backup/dump.ts";
import { verifyFreshBackup } from "../backup/verify.ts";
import type { Reason } from "../backup/manifest.ts";

/**
 * The first step of every destructive operation (reset, restore, migrate down, recover): a backup
 * of what is about to change, read back before anything is touched. If it cannot be taken or does
 * not verify, the operation stops here and nothing was changed. The caller holds the maintenance lock.
 */
export async function takeSafetyBackup(
  options: Omit<BackupOptions, "reason"> & { reason: Extract<Reason, `pre-${string}`> },
): Promise<BackupResult> {
  const safety = await createBackup(options);
  await verifyFreshBackup(safety.path, options.age);
  return safety;
}
