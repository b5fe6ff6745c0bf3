import { hostname } from "node:os";
import { Cron } from "croner";
import type { Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";
import { formatDuration } from "../duration.ts";

/** What a slot is taken for: one row per (scheduled time, kind) in backup_runs. */
export type SlotKind = "backup" | "drill" | "base" | "pitr-drill";

/**
 * How much earlier than its slot an honest claim may be written. Croner fires on the service's
 * clock, started_at is the database's, and services run on several hosts: NTP keeps them within a
 * second, and 5 minutes still covers a host whose NTP has been off for weeks (tens of ppm of drift
 * is a few seconds a day) or a VM resumed with a stale clock. A planted claim is written hours or
 * days ahead. Too small a figure takes over honest claims from a fast clock: the slot runs twice.
 */
export const CLAIM_SKEW_MS = 5 * 60_000;

/**
 * Next transaction ids this process saw, and when: a row whose inserting transaction id is below
 * one was written before that moment, whatever its columns say. xmin is the server's to set, not
 * the writer's, so this is the evidence a planter cannot forge (started_at they can).
 */
type Horizon = { at: number; next: bigint };
const horizons = new WeakMap<Sql, Horizon[]>();

function noteNext(sql: Sql, next: string, at: Date): void {
  // `at` is the database's clock, read after the snapshot behind `next` was taken: hosts' clocks
  // differ, and only each claimer's own skew against the database is allowed for. A counter lower
  // than before (a failover to a lagging standby, a restore) is another history, whose notes would
  // date honest rows as old. 64 notes are hours of any real schedule: losing older ones only leaves a
  // very late claim (a queued PITR drill) to the started_at check.
  const n = BigInt(next);
  const kept = (horizons.get(sql) ?? []).filter((h) => h.next <= n);
  horizons.set(sql, [...kept, { at: at.getTime(), next: n }].slice(-64));
}

/** The newest transaction-id horizon this process saw by `by`, if any. */
function horizonBy(sql: Sql, by: number): Horizon | undefined {
  return horizons
    .get(sql)
    ?.filter((h) => h.at <= by)
    .at(-1);
}

/** Note the database's next transaction id now: scheduleSlots does so a little before each slot's skew window. */
export async function noteHorizon(sql: Sql): Promise<void> {
  const [r] = await sql<{ next: string; at: Date }[]>`
    select pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text as next,
      pg_catalog.clock_timestamp() as at`;
  noteNext(sql, r!.next, r!.at);
}

/** A row's 32-bit xmin as the 64-bit id it stands for, given the 64-bit next id (it is less, by under 2^31). */
function fullXid(xmin: string, next: bigint): bigint {
  return next - BigInt.asUintN(32, next - BigInt(xmin));
}

type Held = { host: string; started_at: Date; xmin: string; next: string; now: Date };

/**
 * Why `row` cannot be an honest claim on `slot`, or undefined if it can be. Honest claims are made
 * at the slot (claim() runs when croner fires it), so one written before slot - CLAIM_SKEW_MS was
 * planted. started_at is checked first: a plain INSERT ahead of time gives itself away there. A
 * planter who also sets started_at is caught by the transaction id, if this process noted a horizon
 * before the skew window (it does before each slot of a schedule it runs, and at every claim).
 */
function unearned(sql: Sql, row: Held, slot: Date): string | undefined {
  const earliest = slot.getTime() - CLAIM_SKEW_MS;
  const started = row.started_at.getTime();
  if (started < earliest) return `started_at is ${formatDuration(slot.getTime() - started)} before the slot`;
  if (started > row.now.getTime() + CLAIM_SKEW_MS) return "started_at is later than the database's clock";
  const h = horizonBy(sql, earliest);
  const next = BigInt(row.next);
  if (h && h.next <= next && fullXid(row.xmin, next) < h.next)
    return `written before ${new Date(h.at).toISOString()}, by its transaction id`;
  return undefined;
}

export type Claim =
  | { taken: true; over?: { host: string; startedAt: Date; reason: string } }
  | { taken: false; host: string };

/**
 * The first process to insert the slot's row takes the run; the others see it taken and skip. A
 * row that no honest claimer could have written (unearned) does not count: this process takes it
 * over, in one UPDATE pinned to the row version it judged (xmin), so of two services that both
 * found it, one wins and the other then sees the winner's row. The row keeps nothing of the planted
 * one. What this does not stop: whoever can write backup_runs (the app's role owns it) can write a
 * claim inside each slot's skew window, one a process started within it cannot date by xmin, or
 * delete, update or truncate rows, or add a trigger. A backup that goes missing that way still
 * shows in the freshness checks (backup check, /ready, the missed-backup line at start).
 * A claim whose run never finished (its claimer died) keeps its slot: that run is lost, as before.
 */
export async function claim(sql: Sql, slot: Date, kind: SlotKind): Promise<Claim> {
  const host = `${hostname()}:${process.pid}`;
  // A row that changes under us (another claimer took it over first) is judged again; one that
  // keeps changing, or inserts that leave no row (a trigger), is an error, not a silent skip.
  for (let attempt = 0; attempt < 3; attempt++) {
    const [mine] = await sql<{ next: string; at: Date }[]>`insert into public.backup_runs (scheduled_for, kind, host)
        values (${slot}, ${kind}, ${host})
      on conflict (scheduled_for, kind) do nothing
      returning pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text as next,
        pg_catalog.clock_timestamp() as at`;
    if (mine) {
      noteNext(sql, mine.next, mine.at);
      return { taken: true };
    }
    const [row] = await sql<Held[]>`select host, started_at, xmin::text as xmin, pg_catalog.now() as now,
        pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text as next
      from public.backup_runs where scheduled_for = ${slot} and kind = ${kind}`;
    if (!row) continue;
    const reason = unearned(sql, row, slot);
    noteNext(sql, row.next, row.now);
    if (!reason) return { taken: false, host: row.host };
    const took = await sql`update public.backup_runs
      set host = ${host}, started_at = pg_catalog.now(), finished_at = null, file = null, error = null
      where scheduled_for = ${slot} and kind = ${kind} and xmin = ${row.xmin}::xid
      returning scheduled_for`;
    if (took.length === 1) return { taken: true, over: { host: row.host, startedAt: row.started_at, reason } };
  }
  throw new Error(`could not claim the ${kind} slot ${slot.toISOString()}: its row in backup_runs kept changing`);
}

/** claim(), saying in the log when another process has the slot (`what` names the job: "backup", "base backup"). */
export async function claimSlot(
  deps: { sql: Sql; log: Log },
  slot: Date,
  kind: SlotKind,
  what: string,
): Promise<boolean> {
  const c = await claim(deps.sql, slot, kind);
  const scheduledFor = slot.toISOString();
  if (c.taken && c.over)
    deps.log({
      level: "warn",
      msg: `${what}: the slot's claim in backup_runs was not written at the slot (planted?); taking the run`,
      scheduledFor,
      claimHost: c.over.host,
      claimStartedAt: c.over.startedAt.toISOString(),
      reason: c.over.reason,
    });
  if (c.taken) return true;
  deps.log({ level: "info", msg: `${what} skipped: another process took this run`, scheduledFor, claimHost: c.host });
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
 * The slot a run firing at `now` is for, the one every process agrees on: the newest at or before
 * `now` (croner fires at its time or after, never before). previousRuns counts only times strictly
 * before the one it is given: a timer firing on the slot's very millisecond got the slot before
 * it, and its claim found that one taken ("another process took this run"), the day's backup lost.
 */
export function slotAt(job: Cron, now: Date): Date {
  return job.previousRuns(1, new Date(now.getTime() + 1))[0] ?? new Date(Math.floor(now.getTime() / 1000) * 1000);
}

/**
 * A cron schedule (croner, in-process) whose every run is one slot: a time every process sharing
 * the database computes alike, so the claim on it (claimSlot, inside `run`) decides which of them
 * takes it. A run still going when the next slot comes makes croner skip that slot (protect);
 * `onOverrun` hears of it. Given `sql`, it notes a transaction-id horizon a little before each
 * slot's skew window, so a claim planted any earlier is told from an honest one (claim()).
 */
export function scheduleSlots(options: {
  schedule: string;
  timezone: string;
  run: (slot: Date) => Promise<void>;
  /** After each run, with the next slot. */
  afterRun?: (next: Date | null) => void;
  onOverrun?: (at: Date | undefined) => void;
  sql?: Sql;
}): SlotSchedule {
  let running: Promise<void> = Promise.resolve();
  let watch: ReturnType<typeof setTimeout> | undefined;
  const { onOverrun, sql } = options;
  // Armed when a slot fires (or is skipped) for the one after it. A minute early: a note taken
  // inside the window (a late timer, a slow reply) is no evidence for that slot. setTimeout
  // overflows past 2^31 ms (24.8 days): a monthly slot waits in steps.
  const arm = () => {
    clearTimeout(watch);
    const next = job.nextRun();
    if (!sql || !next) return;
    const wait = next.getTime() - CLAIM_SKEW_MS - 60_000 - Date.now();
    const step = 2 ** 31 - 1;
    // A note that fails (the database away) leaves that slot to the started_at check alone.
    const note = () => void noteHorizon(sql).catch(() => {});
    watch = setTimeout(wait > step ? arm : note, Math.min(Math.max(wait, 0), step));
    watch.unref?.();
  };
  const job = new Cron(
    options.schedule,
    {
      timezone: options.timezone,
      protect: (j: Cron) => {
        arm();
        onOverrun?.(j.currentRun() ?? undefined);
      },
    },
    async (self: Cron) => {
      arm();
      const slot = slotAt(self, new Date());
      running = options.run(slot);
      await running;
      options.afterRun?.(self.nextRun());
    },
  );
  arm();
  return {
    nextRun: () => job.nextRun(),
    lastSlot: () => job.previousRuns(1)[0],
    async stop() {
      job.stop();
      clearTimeout(watch);
      // Let a run in progress finish rather than leave a .partial or scratch database behind.
      await running;
    },
  };
}
