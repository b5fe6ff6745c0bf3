import type { Config } from "../config/index.ts";
import { withAdvisoryLock, type Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";
import { notify } from "../service/notify.ts";
import { claimSlot, recordRun } from "../service/slot.ts";
import { startPoller } from "../service/poller.ts";
import { createBaseBackup, listBaseBackups } from "./base.ts";
import { verifyBaseBackup } from "./verify-base.ts";
import { pruneWalLocal, pruneWalStore } from "./prune.ts";
import { walStore } from "./offsite.ts";
import { slotStatus } from "./slot.ts";

/** Retention after each base backup: locally, then off-site; a failure is logged and retried next time. */
async function pruneWal(config: Config, log: Log): Promise<void> {
  const store = walStore(config);
  try {
    const local = await pruneWalLocal(config, { dryRun: false, offsite: store });
    const remote = store && config.s3 ? await pruneWalStore(store, config.s3.keepDays, config.backup, false) : null;
    if (local.removed.length || remote?.removed.length) {
      log({
        level: "info",
        msg: "wal retention",
        removedLocal: local.removed.length,
        walLocal: local.wal,
        removedOffsite: remote?.removed.length ?? 0,
        walOffsite: remote?.wal ?? null,
        why: local.walWhy,
      });
    }
  } catch (e) {
    log({
      level: "warn",
      msg: "wal retention failed; it runs again after the next base backup",
      error: (e as Error).message,
    });
  }
}

/** One scheduled base backup; like the dump schedule, the first service to claim the slot takes it. */
export async function scheduledBaseBackup(
  deps: { sql: Sql; config: Config; log: Log; afterBaseBackup?: () => Promise<void> },
  slot: Date,
): Promise<void> {
  const { sql, config, log } = deps;
  try {
    if (!(await claimSlot(deps, slot, "base", "base backup"))) return;
    log({ level: "info", msg: "base backup started", scheduledFor: slot.toISOString() });
    const { path, manifest: m } = await withAdvisoryLock(
      sql,
      "base-backup",
      () =>
        createBaseBackup({
          sql,
          url: config.databaseUrl,
          backupDir: config.backupDir,
          reason: "scheduled",
          fast: config.wal.baseBackupStartFast,
          age: config.backup.age,
        }),
      { what: "base backup" },
    );
    log({
      level: "info",
      msg: "base backup finished",
      file: path,
      sizeBytes: m.sizeBytes,
      durationMs: m.durationMs,
      startLsn: m.startLsn,
      stopLsn: m.stopLsn,
      timeline: m.timeline,
    });
    const base = (await listBaseBackups(config.backupDir)).find((b) => b.path === path);
    if (base) {
      const v = await verifyBaseBackup(config.backupDir, base, config.backup.age);
      log({
        level: v.ok ? "info" : "error",
        msg: v.ok ? "base backup verified" : "base backup failed verification",
        file: path,
        pgVerifybackup: v.pgVerifybackup,
        problems: v.problems,
      });
      if (!v.ok)
        notify(
          config.backup.webhookUrl,
          { event: "base_backup.failed", file: m.file, error: v.problems.join("; ") },
          log,
        );
    }
    await recordRun(
      sql`update public.backup_runs set finished_at = now(), file = ${m.file}
        where scheduled_for = ${slot} and kind = 'base'`,
      log,
    );
    await pruneWal(config, log);
    await deps.afterBaseBackup?.();
  } catch (e) {
    const error = (e as Error).message;
    log({ level: "error", msg: "base backup failed", scheduledFor: slot.toISOString(), error });
    await recordRun(
      sql`update public.backup_runs set finished_at = now(), error = ${error}
        where scheduled_for = ${slot} and kind = 'base'`,
      log,
    );
    notify(config.backup.webhookUrl, { event: "base_backup.failed", error }, log);
  }
}

/**
 * Watch the slot: when the server is about to drop (unreserved) or has dropped (lost) WAL we have
 * not received, say so once per change, in the log and to the webhook; the archive has a hole.
 */
export function watchSlot(deps: { sql: Sql; config: Config; log: Log }, everyMs: number): () => void {
  const { sql, config, log } = deps;
  let last: string | null = null;
  const poller = startPoller(async () => {
    if (!config.wal.slot) return;
    const s = await slotStatus(sql, config.wal.slot).catch(() => undefined);
    if (s === undefined) return; // the server is unreachable: the receiver's own lines say so
    const state = s?.walStatus ?? "missing";
    if (state === last) return;
    last = state;
    if (state === "reserved")
      log({
        level: "info",
        msg: "replication slot healthy",
        slot: config.wal.slot,
        walStatus: state,
        safeWalSize: s?.safeWalSize ?? null,
      });
    else {
      log({
        level: state === "extended" ? "warn" : "error",
        msg: "replication slot at risk",
        slot: config.wal.slot,
        walStatus: state,
        safeWalSize: s?.safeWalSize ?? null,
      });
      if (state !== "extended")
        notify(config.backup.webhookUrl, { event: "wal.slot_at_risk", slot: config.wal.slot, walStatus: state }, log);
    }
  }, everyMs);
  return () => void poller.stop();
}
