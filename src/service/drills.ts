import type { Config } from "../config/index.ts";
import { describeTarget, type Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";
import { notify } from "./notify.ts";
import { scheduleSlots, claimSlot } from "./slot.ts";
import { newestGood } from "../backup/freshness.ts";
import { runDrill } from "../backup/drill.ts";
import { canOpen } from "../storage/crypt.ts";
import { readManifest } from "../backup/manifest.ts";
import { readPitrDrills, runPitrDrill } from "../pitr/drill.ts";

type Deps = { sql: Sql; config: Config; log: Log };

/** What a drill found: `log` goes on the passed/failed line, `subject` also to the webhook. */
type Outcome = {
  passed: boolean;
  differences: string[];
  subject: Record<string, unknown>;
  log?: Record<string, unknown>;
};

/**
 * Run a drill and report it like a backup run: "<what> started", "<what> passed" or "<what> failed"
 * in the log, and `<event>.failed` to the webhook (`<event>.passed` too when `notifyPassed`). A drill
 * that throws is reported as failed with its error.
 */
export async function drillAndReport(
  deps: { config: Config; log: Log },
  drill: {
    what: string;
    event: string;
    about?: Record<string, unknown>;
    notifyPassed: boolean;
    run: () => Promise<Outcome>;
  },
): Promise<void> {
  const { config, log } = deps;
  const { what, event, about } = drill;
  log({ level: "info", msg: `${what} started`, ...about });
  try {
    const r = await drill.run();
    log({
      level: r.passed ? "info" : "error",
      msg: `${what} ${r.passed ? "passed" : "failed"}`,
      ...r.subject,
      ...r.log,
      differences: r.differences,
    });
    if (!r.passed || drill.notifyPassed)
      notify(
        config.backup.webhookUrl,
        { event: `${event}.${r.passed ? "passed" : "failed"}`, ...r.subject, differences: r.differences },
        log,
      );
  } catch (e) {
    log({ level: "error", msg: `${what} failed`, ...about, error: (e as Error).message });
    notify(config.backup.webhookUrl, { event: `${event}.failed`, error: (e as Error).message }, log);
  }
}

/** A restore drill of one dump (backup/drill.ts), unless this host holds no key to open it. */
export async function drillBackup(deps: { config: Config; log: Log }, path: string): Promise<void> {
  const { config, log } = deps;
  if (!canOpen((await readManifest(path))?.encryption, config.backup.age)) {
    log({
      level: "info",
      msg: "drill skipped: the backup is encrypted and this host holds no key to open it",
      file: path,
    });
    return;
  }
  await drillAndReport(deps, {
    what: "drill",
    event: "drill",
    about: { file: path },
    notifyPassed: true,
    run: async () => {
      const r = await runDrill({
        path,
        serverUrl: config.backup.drillServerUrl ?? config.databaseUrl,
        age: config.backup.age,
      });
      return {
        passed: r.passed,
        differences: r.differences,
        subject: { file: r.file },
        log: { durationMs: r.durationMs },
      };
    },
  });
}

/** One scheduled drill: the newest good backup, restored into a scratch database and compared. */
export async function scheduledDrill(deps: Deps, slot: Date): Promise<void> {
  const { config, log } = deps;
  try {
    if (!(await claimSlot(deps, slot, "drill", "drill"))) return;
    const { newest } = await newestGood(
      config.backupDir,
      describeTarget(config.databaseUrl),
      config.backup.age?.manifestKey,
    );
    if (!newest) {
      // No backup to drill is no drill passed: the webhook hears of it, as of every scheduled drill.
      const error = "no good backup of this database to drill";
      log({ level: "warn", msg: "drill skipped: no good backup to drill", backupDir: config.backupDir });
      notify(config.backup.webhookUrl, { event: "drill.failed", error }, log);
      return;
    }
    await drillBackup(deps, newest.path);
  } catch (e) {
    // Before the drill itself (the claim: the database away, say): reported like a backup whose claim failed.
    log({ level: "error", msg: "drill failed", scheduledFor: slot.toISOString(), error: (e as Error).message });
    notify(config.backup.webhookUrl, { event: "drill.failed", error: (e as Error).message }, log);
  }
}

/** A PITR drill (pitr/drill.ts), logged and (on failure) sent to the webhook. */
export async function drillPitr(deps: Deps): Promise<void> {
  await drillAndReport(deps, {
    what: "pitr drill",
    event: "pitr_drill",
    notifyPassed: false,
    run: async () => {
      const r = await runPitrDrill(deps);
      return {
        passed: r.passed,
        differences: r.differences,
        subject: { restorePoint: r.restorePoint },
        log: { base: r.base, rtoMs: r.rtoMs, durationMs: r.durationMs },
      };
    },
  });
}

export type PitrDrills = { afterBaseBackup(): Promise<void>; stop(): Promise<void> };

/**
 * The drill schedule (PITR_DRILL_SCHEDULE; one service per slot takes it), and `afterBaseBackup`
 * for a new deployment: a drill as soon as there is a base backup, not a week later.
 */
export function startPitrDrills(deps: Deps): PitrDrills {
  const { config, log } = deps;
  // One drill at a time, whichever asked: a scheduled one and the first after a base backup queue.
  let running: Promise<void> = Promise.resolve();
  const run = (slot: Date | null) =>
    (running = running
      .then(async () => {
        if (slot && !(await claimSlot(deps, slot, "pitr-drill", "pitr drill"))) return;
        await drillPitr(deps);
      })
      .catch((e) => {
        // The claim failed (the database away, say): drillPitr, which reports its own, never throws.
        log({ level: "error", msg: "pitr drill failed", error: (e as Error).message });
        notify(config.backup.webhookUrl, { event: "pitr_drill.failed", error: (e as Error).message }, log);
      }));
  const schedule = scheduleSlots({
    schedule: config.wal.pitrDrillSchedule,
    timezone: config.backup.timezone,
    run,
    sql: deps.sql,
  });
  log({
    level: "info",
    msg: "pitr drill schedule",
    schedule: config.wal.pitrDrillSchedule,
    next: schedule.nextRun()?.toISOString() ?? null,
  });
  return {
    async afterBaseBackup() {
      if ((await readPitrDrills(config.backupDir)).length === 0) await run(null);
    },
    async stop() {
      await schedule.stop();
      await running;
    },
  };
}
