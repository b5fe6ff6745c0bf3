import type { Config } from "../config/index.ts";
import { describeTarget, type Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";
import { notify } from "./notify.ts";
import { claimSlot, recordRun, scheduleSlots, type SlotSchedule } from "./slot.ts";
import { drillBackup, scheduledDrill } from "./drills.ts";
import { formatDuration } from "../duration.ts";
import { createBackup } from "../backup/dump.ts";
import { withMaintenanceLock } from "../pg/lock.ts";
import { mirrorMissing } from "../backup/offsite.ts";
import { BACKUPS, leftAloneText, pruneLocal, pruneStore, RECORDS, type LeftAlone } from "../backup/prune.ts";
import { newestGood, newestPassedDrill } from "../backup/freshness.ts";
import { offsiteStore } from "../storage/stores.ts";
import { mirrorMissingRecoveries, pruneRecoveries, recoveryStore } from "../recover/stores.ts";
import type { BackupStore } from "../storage/store.ts";

export type Scheduler = { stop(): Promise<void> };

type Deps = { sql: Sql; config: Config; log: Log; store?: BackupStore };

/**
 * One scheduled run: back up, copy off-site whatever is missing, apply retention, log one line per
 * step and tell the webhook. Nothing here throws: a failed run is reported, and the next one runs.
 */
export async function scheduledRun(deps: Deps, slot: Date): Promise<void> {
  const { sql, config, log, store } = deps;
  const started = performance.now();
  try {
    if (!(await claimSlot(deps, slot, "backup", "backup"))) return;
  } catch (e) {
    log({ level: "error", msg: "backup failed", scheduledFor: slot.toISOString(), error: (e as Error).message });
    notify(config.backup.webhookUrl, { event: "backup.failed", error: (e as Error).message }, log);
    return;
  }
  log({ level: "info", msg: "backup started", scheduledFor: slot.toISOString() });
  let file: string | undefined;
  try {
    const result = await withMaintenanceLock(
      sql,
      "scheduled backup",
      () =>
        createBackup({
          sql,
          url: config.databaseUrl,
          dir: config.backupDir,
          reason: "scheduled",
          compressionLevel: config.backup.compressionLevel,
          age: config.backup.age,
        }),
      true,
    );
    file = result.path;
    const m = result.manifest;
    log({
      level: "info",
      msg: "backup finished",
      file,
      sizeBytes: m.sizeBytes,
      durationMs: m.durationMs,
      duration: formatDuration(m.durationMs),
      sha256: m.sha256,
    });

    let offsite: Record<string, unknown> = { offsite: "not configured" };
    if (store) {
      try {
        const report = await mirrorMissing(store, config.backupDir, describeTarget(config.databaseUrl));
        offsite = {
          offsite: report.failed.length ? "failed" : "ok",
          location: store.location,
          copied: report.copied,
          failed: report.failed,
        };
      } catch (e) {
        offsite = { offsite: "failed", location: store.location, error: (e as Error).message };
      }
    }
    log({ level: offsite.offsite === "failed" ? "error" : "info", msg: "off-site copy", file, ...offsite });
    await mirrorRecords(config, log);

    const owner = describeTarget(config.databaseUrl);
    // What retention left to the other databases' services sharing the folder or prefix, said once a run.
    const leftAlone: string[] = [];
    const note = (r: { location: string; leftAlone: LeftAlone }, what = BACKUPS) => {
      const text = leftAloneText(r.leftAlone, what);
      if (text) leftAlone.push(`${r.location}: ${text}`);
    };
    const { local, remote, records } = await withMaintenanceLock(
      sql,
      "retention",
      async () => {
        const local = await pruneLocal(config, { dryRun: false, offsite: store });
        note(local);
        let remote: string[] = [];
        if (store && config.s3) {
          remote = await pruneStore(
            store,
            config.s3.keepDays,
            config.backup,
            false,
            owner,
            config.backup.age?.manifestKey,
          ).then(
            (r) => (note(r), r.removed),
            (e: Error) => (
              log({ level: "warn", msg: "off-site retention failed; it runs again next time", error: e.message }), []
            ),
          );
        }
        const records = await pruneRecoveries(config, false).then(
          (reports) =>
            reports.flatMap((r) => {
              note(r, RECORDS);
              return r.removed.map((name) => `${r.location}: ${name}`);
            }),
          (e: Error) => (
            log({ level: "warn", msg: "recovery record retention failed; it runs again next time", error: e.message }),
            []
          ),
        );
        return { local, remote, records };
      },
      true,
    );
    if (local.removed.length || remote.length || records.length || leftAlone.length)
      log({
        level: "info",
        msg: "retention",
        removedLocal: local.removed,
        removedOffsite: remote,
        removedRecoveryRecords: records,
        leftAlone,
      });

    await recordRun(
      sql`update public.backup_runs set finished_at = now(), file = ${m.file} where scheduled_for = ${slot}
        and kind = 'backup'`,
      log,
    );
    notify(
      config.backup.webhookUrl,
      { event: "backup.succeeded", file: m.file, sizeBytes: m.sizeBytes, durationMs: m.durationMs, ...offsite },
      log,
    );

    // A new deployment would otherwise wait for the weekly drill before `backup check` can pass.
    const drilled = await newestPassedDrill(config.backupDir, describeTarget(config.databaseUrl));
    if (!drilled || Date.now() - Date.parse(drilled.at) > config.backup.drillMaxAgeMs) await drillBackup(deps, file);
  } catch (e) {
    const error = (e as Error).message;
    log({
      level: "error",
      msg: "backup failed",
      scheduledFor: slot.toISOString(),
      durationMs: Math.round(performance.now() - started),
      error,
    });
    await recordRun(
      sql`update public.backup_runs set finished_at = now(), error = ${error} where scheduled_for = ${slot}
        and kind = 'backup'`,
      log,
    );
    notify(config.backup.webhookUrl, { event: "backup.failed", error }, log);
  }
}

/**
 * Recovery records not yet off-site (a recovery whose own copy failed): copied like backups, logged
 * only when there was something to copy. Never throws: the next run tries again.
 */
async function mirrorRecords(config: Config, log: Log): Promise<void> {
  const store = recoveryStore(config);
  if (!store) return;
  const report = await mirrorMissingRecoveries(store, config.backupDir, describeTarget(config.databaseUrl)).catch(
    (e: Error) => ({
      copied: [],
      failed: [{ name: "*", error: e.message }],
    }),
  );
  if (report.copied.length || report.failed.length)
    log({
      level: report.failed.length ? "error" : "info",
      msg: "off-site copy of recovery records",
      location: store.location,
      copied: report.copied,
      failed: report.failed,
    });
}

/** Report a run that should have happened but did not (the service was down, say). */
async function reportMissed(config: Config, schedule: SlotSchedule, log: Log) {
  const expected = schedule.lastSlot();
  const { newest } = await newestGood(
    config.backupDir,
    describeTarget(config.databaseUrl),
    config.backup.age?.manifestKey,
  );
  if (!newest) log({ level: "warn", msg: "no good backup yet", backupDir: config.backupDir });
  else if (expected && newest.takenAt < expected) {
    log({
      level: "warn",
      msg: "missed backup",
      expectedAt: expected.toISOString(),
      newest: newest.name,
      newestAt: newest.takenAt.toISOString(),
    });
  }
}

/** The dump schedule and the drill schedule: overruns are skipped, and the DB decides who takes each slot. */
export function startScheduler(deps: { sql: Sql; config: Config; log: Log }): Scheduler {
  const { config, log } = deps;
  const store = offsiteStore(config);
  const job = scheduleSlots({
    schedule: config.backup.schedule,
    sql: deps.sql,
    timezone: config.backup.timezone,
    onOverrun: (at) => log({ level: "warn", msg: "backup still running; this run is skipped", at: at?.toISOString() }),
    run: (slot) => scheduledRun({ ...deps, store }, slot),
    afterRun: (next) => log({ level: "info", msg: "next backup", at: next?.toISOString() ?? null }),
  });
  const drillJob = scheduleSlots({
    schedule: config.backup.drillSchedule,
    sql: deps.sql,
    timezone: config.backup.timezone,
    run: (slot) => scheduledDrill(deps, slot),
  });
  log({
    level: "info",
    msg: "backup schedule",
    schedule: config.backup.schedule,
    timezone: config.backup.timezone,
    next: job.nextRun()?.toISOString() ?? null,
    drillSchedule: config.backup.drillSchedule,
    nextDrill: drillJob.nextRun()?.toISOString() ?? null,
    offsite: store?.location ?? "none",
  });
  reportMissed(config, job, log).catch((e: Error) =>
    log({ level: "warn", msg: "could not check for missed backups", error: e.message }),
  );
  return {
    async stop() {
      // Each waits for a backup or drill in progress rather than leave a .partial or scratch database behind.
      await Promise.all([job.stop(), drillJob.stop()]);
    },
  };
}
