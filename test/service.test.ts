import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { until } from "./support/wait.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { claimSlot, recordRun, scheduleSlots } from "../src/service/slot.ts";
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
