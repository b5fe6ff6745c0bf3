import type { Config } from "../config/index.ts";
import type { Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";
import { startWalStream } from "../wal/stream.ts";
import { scheduledBaseBackup, watchSlot } from "../wal/service.ts";
import { startPitrDrills, type PitrDrills } from "./drills.ts";
import { startScheduler } from "./schedule.ts";
import { scheduleSlots } from "./slot.ts";

export type Running = { stop(): Promise<void> | void };
export type ServiceDeps = { sql: Sql; config: Config; log: Log; slotCheckMs?: number };

/** One thing a service runs. `started` holds the parts before it in the list, by name. */
export type Part = {
  name: string;
  start(deps: ServiceDeps, started: ReadonlyMap<string, Running>): Promise<Running> | Running;
};

/** The base backup schedule; after each base backup, the first PITR drill of a new deployment. */
function startBaseBackups(deps: ServiceDeps, drills: PitrDrills | undefined): Running {
  const { config, log } = deps;
  const schedule = scheduleSlots({
    schedule: config.wal.baseBackupSchedule,
    sql: deps.sql,
    timezone: config.backup.timezone,
    run: (slot) => scheduledBaseBackup({ ...deps, afterBaseBackup: drills?.afterBaseBackup }, slot),
  });
  log({
    level: "info",
    msg: "base backup schedule",
    schedule: config.wal.baseBackupSchedule,
    timezone: config.backup.timezone,
    next: schedule.nextRun()?.toISOString() ?? null,
  });
  return schedule;
}

/** What WAL_ARCHIVE=stream adds: started in this order, stopped in the reverse one. */
export const walParts: readonly Part[] = [
  // First: a refused slot (or a synchronous standby) stops the service before anything is scheduled.
  // Last to stop: the WAL of everything else's final moments is still received and archived.
  { name: "wal stream", start: (deps) => startWalStream(deps) },
  { name: "slot watch", start: (deps) => ({ stop: watchSlot(deps, deps.slotCheckMs ?? 60_000) }) },
  { name: "pitr drills", start: (deps) => startPitrDrills(deps) },
  {
    name: "base backups",
    start: (deps, started) => startBaseBackups(deps, started.get("pitr drills") as PitrDrills | undefined),
  },
];

/**
 * Everything `backup-service` runs, in the order it starts them; it stops them in the reverse
 * order, each waiting for its work under way (a backup, a drill) to finish. `ops` is the metrics
 * and status server, built by the command (it lives above this layer).
 */
export function backupServiceParts(config: Config, ops?: Part): Part[] {
  return [
    ...(config.wal.archive === "stream" ? walParts : []),
    ...(ops ? [ops] : []),
    { name: "backup schedule", start: (deps) => startScheduler(deps) },
  ];
}

/**
 * Start `parts` in order. stop() stops them in the reverse order, one after the other; a part that
 * fails to start stops the ones already started before the error is thrown.
 */
export async function startParts(parts: readonly Part[], deps: ServiceDeps): Promise<{ stop(): Promise<void> }> {
  const started = new Map<string, Running>();
  const stop = async () => {
    for (const name of [...started.keys()].reverse()) {
      await started.get(name)!.stop();
      started.delete(name);
    }
  };
  for (const part of parts) {
    try {
      started.set(part.name, await part.start(deps, started));
    } catch (e) {
      await stop();
      throw e;
    }
  }
  return { stop };
}

/** The WAL side alone: stream, slot watch, PITR drills, base backups. */
export const startWalService = (deps: ServiceDeps) => startParts(walParts, deps);
