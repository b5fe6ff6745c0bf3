import { hostname } from "node:os";
import { Cron } from "croner";
import type { Config } from "./config.ts";
import type { Sql } from "./db.ts";
import type { Log } from "./log.ts";
import { notify } from "./notify.ts";
import { formatDuration } from "./duration.ts";
import { createBackup } from "./backup/dump.ts";
import { withMaintenanceLock } from "./backup/lock.ts";
import { mirrorMissing } from "./backup/offsite.ts";
import { pruneLocal, pruneStore } from "./backup/prune.ts";
import { newestGood } from "./backup/freshness.ts";
import { offsiteStore } from "./backup/stores/index.ts";
import type { BackupStore } from "./backup/stores/store.ts";

export type Scheduler = { stop(): Promise<void>; nextRun(): Date | null; runOnce(slot: Date): Promise<void> };

/** The first process to insert the slot's row takes the backup; the others see it taken and skip. */
async function claim(sql: Sql, slot: Date): Promise<boolean> {
  const rows = await sql`insert into backup_runs (scheduled_for, host) values (${slot}, ${`${hostname()}:${process.pid}`})
    on conflict (scheduled_for) do nothing returning scheduled_for`;
  return rows.length === 1;
}

/**
 * One scheduled run: back up, copy off-site whatever is missing, apply retention, log one line per
 * step and tell the webhook. Nothing here throws: a failed run is reported, and the next one runs.
 */
export async function scheduledRun(deps: { sql: Sql; config: Config; log: Log; store?: BackupStore }, slot: Date): Promise<void> {
  const { sql, config, log, store } = deps;
  const started = performance.now();
  try {
    if (!(await claim(sql, slot))) {
      log({ level: "info", msg: "backup skipped: another process took this run", scheduledFor: slot.toISOString() });
      return;
    }
  } catch (e) {
    log({ level: "error", msg: "backup failed", scheduledFor: slot.toISOString(), error: (e as Error).message });
    notify(config.backup.webhookUrl, { event: "backup.failed", error: (e as Error).message }, log);
    return;
  }
  log({ level: "info", msg: "backup started", scheduledFor: slot.toISOString() });
  let file: string | undefined;
  try {
    const result = await withMaintenanceLock(sql, "scheduled backup", () =>
      createBackup({ sql, url: config.databaseUrl, dir: config.backupDir, reason: "scheduled", compressionLevel: config.backup.compressionLevel }), true);
    file = result.path;
    const m = result.manifest;
    log({ level: "info", msg: "backup finished", file, sizeBytes: m.sizeBytes, durationMs: m.durationMs, duration: formatDuration(m.durationMs), sha256: m.sha256 });

    let offsite: Record<string, unknown> = { offsite: "not configured" };
    if (store) {
      try {
        const report = await mirrorMissing(store, config.backupDir);
        offsite = { offsite: report.failed.length ? "failed" : "ok", location: store.location, copied: report.copied, failed: report.failed };
      } catch (e) {
        offsite = { offsite: "failed", location: store.location, error: (e as Error).message };
      }
    }
    log({ level: offsite.offsite === "failed" ? "error" : "info", msg: "off-site copy", file, ...offsite });

    const local = await pruneLocal(config, { dryRun: false, offsite: store });
    let remote: string[] = [];
    if (store && config.s3) {
      remote = (await pruneStore(store, config.s3.keepDays, config.backup, false).catch(() => ({ removed: [] as string[] }))).removed;
    }
    if (local.removed.length || remote.length) log({ level: "info", msg: "retention", removedLocal: local.removed, removedOffsite: remote });

    await sql`update backup_runs set finished_at = now(), file = ${m.file} where scheduled_for = ${slot}`.catch(() => {});
    notify(config.backup.webhookUrl, { event: "backup.succeeded", file: m.file, sizeBytes: m.sizeBytes, durationMs: m.durationMs, ...offsite }, log);
  } catch (e) {
    const error = (e as Error).message;
    log({ level: "error", msg: "backup failed", scheduledFor: slot.toISOString(), durationMs: Math.round(performance.now() - started), error });
    await sql`update backup_runs set finished_at = now(), error = ${error} where scheduled_for = ${slot}`.catch(() => {});
    notify(config.backup.webhookUrl, { event: "backup.failed", error }, log);
  }
}

/** Report a run that should have happened but did not (the service was down, say). */
async function reportMissed(config: Config, job: Cron, log: Log) {
  const expected = job.previousRuns(1)[0];
  const { newest } = await newestGood(config.backupDir);
  if (!newest) log({ level: "warn", msg: "no good backup yet", backupDir: config.backupDir });
  else if (expected && newest.takenAt < expected) {
    log({ level: "warn", msg: "missed backup", expectedAt: expected.toISOString(), newest: newest.name, newestAt: newest.takenAt.toISOString() });
  }
}

/** Croner in-process: overruns are skipped (protect), and the DB decides who takes each slot. */
export function startScheduler(deps: { sql: Sql; config: Config; log: Log }): Scheduler {
  const { config, log } = deps;
  const store = offsiteStore(config);
  let running: Promise<void> = Promise.resolve();
  const job = new Cron(
    config.backup.schedule,
    {
      timezone: config.backup.timezone,
      protect: (j) => log({ level: "warn", msg: "backup still running; this run is skipped", at: j.currentRun()?.toISOString() }),
    },
    async (self: Cron) => {
      // previousRuns includes a run earlier in this same second: the slot every process agrees on.
      const slot = self.previousRuns(1, new Date())[0] ?? new Date(Math.floor(Date.now() / 1000) * 1000);
      running = scheduledRun({ ...deps, store }, slot);
      await running;
      log({ level: "info", msg: "next backup", at: self.nextRun()?.toISOString() ?? null });
    },
  );
  log({ level: "info", msg: "backup schedule", schedule: config.backup.schedule, timezone: config.backup.timezone, next: job.nextRun()?.toISOString() ?? null, offsite: store?.location ?? "none" });
  reportMissed(config, job, log).catch(() => {});
  return {
    nextRun: () => job.nextRun(),
    runOnce: (slot) => scheduledRun({ ...deps, store }, slot),
    async stop() {
      job.stop();
      await running; // let a backup in progress finish rather than leave a .partial behind
    },
  };
}
