import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { connect } from "../src/pg/db.ts";
import { until } from "./support/wait.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { claimSlot, recordRun, scheduleSlots, slotAt } from "../src/service/slot.ts";
import { Cron } from "croner";
import { startPoller } from "../src/service/poller.ts";
import { startParts, type Part } from "../src/service/backup-service.ts";
type LogLine = Record<string, unknown>;

let db: TestDatabase;
beforeAll(async () => {
  db = await freshDatabase("service");
  await migrate(db.sql);
});
afterAll(() => db.drop());

describe("the poller", () => {
  test("a pass slower than the interval never runs twice at once, and stop() waits for the one under way", async () => {
    let inPass = 0;
    let most = 0;
    let passes = 0;
    const poller = startPoller(async () => {
      inPass++;
      most = Math.max(most, inPass);
      await Bun.sleep(100);
      passes++;
      inPass--;
    }, 10);
    await until("three passes", async () => passes >= 3);
    await until("a pass under way", async () => inPass === 1);
    await poller.stop();
    expect(inPass).toBe(0); // stop() returned only after the pass finished
    expect(most).toBe(1);
    const after = passes;
    await Bun.sleep(150);
    expect(passes).toBe(after); // and none started since
  });

  test("a pass that throws ends that pass only: the next tick runs again", async () => {
    let calls = 0;
    const poller = startPoller(async () => {
      calls++;
      throw new Error("store unreachable");
    }, 10);
    await until("several passes despite the errors", async () => calls >= 3);
    await poller.stop();
  });
});

describe("the scheduled slot", () => {
  test("a run firing on its slot's very millisecond, or later in it, is for that slot, not the one before", () => {
    for (const [pattern, at, slot] of [
      ["0 2 * * *", "2026-12-06T02:00:00.000Z", "2026-12-06T02:00:00.000Z"],
      ["0 2 * * *", "2026-12-06T02:00:00.850Z", "2026-12-06T02:00:00.000Z"],
      ["*/2 * * * * *", "2026-12-06T23:48:10.000Z", "2026-12-06T23:48:10.000Z"],
      ["*/2 * * * * *", "2026-12-06T23:48:11.999Z", "2026-12-06T23:48:10.000Z"],
    ]) {
      const job = new Cron(pattern!, { paused: true, timezone: "UTC" });
      expect(slotAt(job, new Date(at!)).toISOString()).toBe(slot!);
      job.stop();
    }
  });

  test("two processes on one schedule: every slot runs once between them, the other says it was taken", async () => {
    const lines: LogLine[] = [];
    const ran: { who: string; slot: string }[] = [];
    const both = ["a", "b"].map((who) =>
      scheduleSlots({
        schedule: "* * * * * *",
        timezone: "UTC",
        run: async (slot) => {
          if (
            !(await claimSlot({ sql: db.sql, log: (l) => void lines.push({ ...l, who }) }, slot, "backup", "test job"))
          )
            return;
          ran.push({ who, slot: slot.toISOString() });
          await Bun.sleep(300);
        },
      }),
    );
    await until("three slots run", async () => ran.length >= 3, 10_000);
    await Promise.all(both.map((s) => s.stop()));
    const slots = ran.map((r) => r.slot);
    expect(new Set(slots).size).toBe(slots.length); // no slot ran twice
    for (const s of slots) expect(new Date(s).getUTCMilliseconds()).toBe(0); // a whole second both agree on
    const skipped = lines.filter((l) => l.msg === "test job skipped: another process took this run");
    expect(skipped.length).toBeGreaterThanOrEqual(1);
    expect(skipped.every((l) => slots.includes(l.scheduledFor as string))).toBe(true);
    const rows = await db.sql<
      { at: Date }[]
    >`select scheduled_for as at from backup_runs where kind = 'backup' order by 1`;
    expect(rows.map((r) => r.at.toISOString())).toEqual(expect.arrayContaining(slots));
  });

  test("stop() waits for the run under way, and no slot runs after it", async () => {
    let running = false;
    let runs = 0;
    const schedule = scheduleSlots({
      schedule: "* * * * * *",
      timezone: "UTC",
      run: async () => {
        running = true;
        await Bun.sleep(400);
        runs++;
        running = false;
      },
    });
    expect(schedule.nextRun()).toBeInstanceOf(Date);
    await until("a run under way", async () => running, 5000);
    await schedule.stop();
    expect(running).toBe(false);
    const after = runs;
    await Bun.sleep(1200);
    expect(runs).toBe(after);
  });
});

describe("a claim planted ahead of its slot", () => {
  const SKEW = 5 * 60_000; // CLAIM_SKEW_MS in slot.ts
  const collect = () => {
    const lines: LogLine[] = [];
    return { lines, deps: { sql: db.sql, log: (l: LogLine) => void lines.push(l) } };
  };
  /** The current whole second, as croner hands a slot to the process claiming it. */
  const nowSlot = (plusMs = 0) => new Date(Math.floor(Date.now() / 1000) * 1000 + plusMs);
  /** A claim of a slot no one else has: this process notes the database's next transaction id with it. */
  let noted = 0;
  const claimAnother = async () =>
    expect(await claimSlot(collect().deps, new Date(Date.UTC(2001, 0, 1, 0, 0, noted++)), "backup", "x")).toBe(true);
  const rowOf = async (slot: Date, kind: string) =>
    (
      await db.sql<{ host: string; started_at: Date }[]>`select host, started_at from backup_runs
      where scheduled_for = ${slot} and kind = ${kind}`
    )[0]!;

  test("a plain INSERT for a future slot does not stop its run: taken over, with a warning naming it", async () => {
    const kinds = ["backup", "drill", "base", "pitr-drill"] as const;
    // What anyone holding the app's role can do: rows for the next slots, written now (started_at defaults).
    const future = [nowSlot(3_600_000), nowSlot(86_400_000)];
    for (const slot of future)
      for (const kind of kinds)
        await db.sql`insert into backup_runs (scheduled_for, kind, host) values (${slot}, ${kind}, 'planter:1')`;
    // And one written three days ago for the slot that is due now.
    const due = nowSlot(-1000);
    await db.sql`insert into backup_runs (scheduled_for, kind, host, started_at)
      values (${due}, 'backup', 'planter:2', now() - interval '3 days')`;
    for (const [slot, kind] of [
      ...future.flatMap((s) => kinds.map((k) => [s, k] as const)),
      [due, "backup"] as const,
    ]) {
      const { lines, deps } = collect();
      const planted = await rowOf(slot, kind);
      expect(await claimSlot(deps, slot, kind, "test job")).toBe(true);
      expect(lines).toEqual([
        expect.objectContaining({
          level: "warn",
          scheduledFor: slot.toISOString(),
          claimHost: planted.host,
          claimStartedAt: planted.started_at.toISOString(),
          reason: expect.stringMatching(/^started_at is .+ before the slot$/),
        }),
      ]);
      expect(String(lines[0]!.msg)).toStartWith(
        "test job: the slot's claim in backup_runs was not written at the slot",
      );
      const row = await rowOf(slot, kind);
      expect(row.host).not.toStartWith("planter:");
      expect(Math.abs(row.started_at.getTime() - Date.now())).toBeLessThan(60_000);
    }
  });

  test("one dated inside the skew window is still known by its transaction id", async () => {
    const slot = new Date(Math.ceil((Date.now() + SKEW + 90_000) / 1000) * 1000);
    // started_at set to look written at the slot by a host whose clock runs ahead: only xmin gives it away.
    await db.sql`insert into backup_runs (scheduled_for, kind, host, started_at)
      values (${slot}, 'base', 'planter:3', now() + interval '2 minutes')`;
    // Before the slot's skew window this process notes the next transaction id (scheduleSlots does it
    // a minute before the window; any claim does too): the planted row's is below it.
    await claimAnother();
    const { lines, deps } = collect();
    expect(await claimSlot(deps, slot, "base", "test job")).toBe(true);
    expect(lines).toEqual([
      expect.objectContaining({
        level: "warn",
        claimHost: "planter:3",
        reason: expect.stringContaining("transaction id"),
      }),
    ]);
  });

  test("a schedule notes the transaction id ahead of its slots, claiming nothing", async () => {
    const slot = new Date(Math.ceil((Date.now() + SKEW + 90_000) / 1000) * 1000);
    await db.sql`insert into backup_runs (scheduled_for, kind, host, started_at)
      values (${slot}, 'drill', 'planter:5', now() + interval '2 minutes')`;
    // Slots a second apart: every note is due at once (a minute before each slot's window has passed).
    let runs = 0;
    const schedule = scheduleSlots({
      schedule: "* * * * * *",
      timezone: "UTC",
      sql: db.sql,
      run: async () => void runs++,
    });
    await until("two slots", async () => runs >= 2, 5000);
    await schedule.stop();
    const { lines, deps } = collect();
    expect(await claimSlot(deps, slot, "drill", "test job")).toBe(true);
    expect(lines).toEqual([expect.objectContaining({ level: "warn", claimHost: "planter:5" })]);
  });

  test("a claim another process made at the slot still makes this one skip, at info", async () => {
    const slot = nowSlot();
    await db.sql`insert into backup_runs (scheduled_for, kind, host) values (${slot}, 'pitr-drill', 'other:1')`;
    const { lines, deps } = collect();
    expect(await claimSlot(deps, slot, "pitr-drill", "test job")).toBe(false);
    expect(lines).toEqual([
      expect.objectContaining({ level: "info", msg: "test job skipped: another process took this run" }),
    ]);
    expect((await rowOf(slot, "pitr-drill")).host).toBe("other:1");
    // Written after this process noted a horizon, dated inside the window: as honest as can be told.
    await claimAnother();
    const later = new Date(Math.ceil((Date.now() + SKEW + 90_000) / 1000) * 1000);
    await db.sql`insert into backup_runs (scheduled_for, kind, host, started_at)
      values (${later}, 'pitr-drill', 'other:2', now() + interval '2 minutes')`;
    const again = collect();
    expect(await claimSlot(again.deps, later, "pitr-drill", "test job")).toBe(false);
    expect(again.lines.map((l) => l.level)).toEqual(["info"]);
  });

  test("two services claiming at once: one run per slot, planted claim or not", async () => {
    // Each on its own connections, as two processes are.
    const other = connect(db.url, { max: 2 });
    try {
      for (let i = 0; i < 20; i++) {
        const slot = nowSlot(-(10 + i) * 60_000);
        if (i % 2 === 0)
          await db.sql`insert into backup_runs (scheduled_for, kind, host, started_at)
            values (${slot}, 'drill', 'planter:4', now() - interval '1 day')`;
        const a = collect();
        const b = { lines: [] as LogLine[], deps: { sql: other, log: (l: LogLine) => void b.lines.push(l) } };
        const won = await Promise.all([a, b].map((s) => claimSlot(s.deps, slot, "drill", "test job")));
        expect(won.filter(Boolean)).toHaveLength(1);
        const levels = [...a.lines, ...b.lines].map((l) => l.level).sort();
        expect(levels).toEqual(i % 2 === 0 ? ["info", "warn"] : ["info"]);
      }
    } finally {
      await other.end({ timeout: 1 });
    }
  });
});

describe("recording a run", () => {
  test("a failed write to backup_runs is a warning naming the error, not thrown and not silent", async () => {
    const lines: LogLine[] = [];
    // A real failure from the server: a column the table does not have.
    await recordRun(db.sql`update backup_runs set no_such_column = now()`, (l) => void lines.push(l));
    expect(lines).toEqual([expect.objectContaining({ level: "warn", msg: "could not record the run in backup_runs" })]);
    expect(String(lines[0]!.error)).toContain("no_such_column");
  });
});

describe("the service's parts", () => {
  const recorder = () => {
    const events: string[] = [];
    const part = (name: string, fail = false): Part => ({
      name,
      start: async (_deps, started) => {
        if (fail) throw new Error(`${name} refused`);
        events.push(`start ${name} after [${[...started.keys()].join(",")}]`);
        return { stop: async () => void events.push(`stop ${name}`) };
      },
    });
    return { events, part };
  };
  const deps = () => ({ sql: db.sql, config: {} as never, log: () => {} });

  test("started in list order, each seeing the ones before; stopped in the reverse order", async () => {
    const { events, part } = recorder();
    const service = await startParts([part("stream"), part("drills"), part("schedule")], deps());
    await service.stop();
    expect(events).toEqual([
      "start stream after []",
      "start drills after [stream]",
      "start schedule after [stream,drills]",
      "stop schedule",
      "stop drills",
      "stop stream",
    ]);
  });

  test("a part that fails to start stops the ones already started, and the error is thrown", async () => {
    const { events, part } = recorder();
    const err = await startParts([part("stream"), part("drills"), part("schedule", true)], deps()).catch((e) => e);
    expect((err as Error).message).toBe("schedule refused");
    expect(events).toEqual(["start stream after []", "start drills after [stream]", "stop drills", "stop stream"]);
  });
});
