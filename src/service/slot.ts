import { hostname } from "node:os";
import { Cron } from "croner";
import type { Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";

/** What a slot is taken for: one row per (scheduled time, kind) in backup_runs. */
export type SlotKind = "backup" | "drill" | "base" | "pitr-drill";

/** The first process to insert the slot's row takes the run; the others see it taken and skip. */
export async function claim(sql: Sql, slot: Date, kind: SlotKind): Promise<boolean> {
  const rows = await sql`insert into public.backup_runs (scheduled_for, kind, host)
      values (${slot}, ${kind}, ${`${hostname()}:${process.pid}`})
    on conflict (scheduled_for, kind) do nothing returning scheduled_for`;
  return rows.length === 1;
}

/** claim(), saying in the log when another process has the slot (`what` names the job: "backup", "base backup"). */
export async function claimSlot(
  deps: { sql: Sql; log: Log },
  slot: Date,
  kind: SlotKind,
  what: string,
): Promise<boolean> {
  if (await claim(deps.sql, slot, kind)) return true;
  deps.log({ level: "info", msg: `${what} skipped: another process took this run`, scheduledFor: slot.toISOString() });
  return false;
}

/**
 * The run's outcome in backup_runs, for the other services sharing the schedule. What the run made
 * is already safe on disk; a failed write is logged, not thrown, so it does not turn into a failure.
 */
export async function recordRun(update: Promise<unknown>, log: Log): Promise<void> {
  await update.catch((e: Error) =>
    log({ level: "warn", msg: "could not record the run in backup_runs", error: e.message }),
  );
}

export type SlotSchedule = {
  /** When the next slot falls, or null if the schedule has none left. */
  nextRun(): Date | null;
  /** The newest slot before now: the run that should already have happened. */
  lastSlot(): Date | undefined;
  /** No further slots; resolves when the run under way (if any) has finished. */
  stop(): Promise<void>;
};

/**
 * A cron schedule (croner, in-process) whose every run is one slot: a time every process sharing
 * the database computes alike, so the claim on it (claimSlot, inside `run`) decides which of them
 * takes it. A run still going when the next slot comes makes croner skip that slot (protect);
 * `onOverrun` hears of it.
 */
export function scheduleSlots(options: {
  schedule: string;
  timezone: string;
  run: (slot: Date) => Promise<void>;
  /** After each run, with the next slot. */
  afterRun?: (next: Date | null) => void;
  onOverrun?: (at: Date | undefined) => void;
}): SlotSchedule {
  let running: Promise<void> = Promise.resolve();
  const { onOverrun } = options;
  const job = new Cron(
    options.schedule,
    { timezone: options.timezone, protect: onOverrun ? (j: Cron) => onOverrun(j.currentRun() ?? undefined) : true },
    async (self: Cron) => {
      // previousRuns includes a run earlier in this same second: the slot every process agrees on.
      const slot = self.previousRuns(1, new Date())[0] ?? new Date(Math.floor(Date.now() / 1000) * 1000);
      running = options.run(slot);
      await running;
      options.afterRun?.(self.nextRun());
    },
  );
  return {
    nextRun: () => job.nextRun(),
    lastSlot: () => job.previousRuns(1)[0],
    async stop() {
      job.stop();
      // Let a run in progress finish rather than leave a .partial or scratch database behind.
      await running;
    },
  };
}
