import { expect, test } from "bun:test";
import { planRetention, type Candidate, type RetentionPolicy } from "../src/backup/retention.ts";
import { backupName } from "../src/storage/naming.ts";

const none: RetentionPolicy = { keepDays: 0, keepDaily: 0, keepWeekly: 0, keepMonthly: 0 };
const at = (iso: string, sequence = 0) => backupName(new Date(iso), sequence);
const good = (name: string): Candidate => ({ name, good: true, mirrored: true });
/** name → why, for reading a whole plan at a glance. */
const reasons = (plan: ReturnType<typeof planRetention>) => Object.fromEntries(plan.map((d) => [d.name, d.why]));

test("grandfather-father-son keeps the newest of each day, week and month", () => {
  const now = new Date(Date.UTC(2026, 5, 30, 12));
  const names = [
    "2026-06-30T02:00:00Z",
    "2026-06-29T14:00:00Z",
    "2026-06-29T02:00:00Z",
    "2026-06-20T02:00:00Z",
    "2026-05-31T02:00:00Z",
    "2026-05-15T02:00:00Z",
    "2026-04-30T02:00:00Z",
  ].map((d) => at(d));
  const plan = planRetention(names.map(good), { keepDays: 1, keepDaily: 2, keepWeekly: 2, keepMonthly: 3 }, now, false);
  expect(plan.filter((d) => d.keep).map((d) => d.name)).toEqual([
    names[0]!,
    names[1]!,
    names[3]!,
    names[4]!,
    names[6]!,
  ]);
  expect(plan.find((d) => d.name === names[2])!.why).toBe("older than 1 days");
});

test("weekly keys are ISO weeks: a week across New Year is one week, named by the year of its Thursday", () => {
  const days = [
    "2027-01-04",
    "2027-01-03",
    "2026-12-31",
    "2026-01-01",
    "2024-12-30",
    "2024-12-29",
    "2021-01-04",
    "2021-01-03",
    "2020-12-28",
    "2020-12-27",
  ];
  const plan = planRetention(
    days.map((d) => good(at(`${d}T02:00:00Z`))),
    { ...none, keepWeekly: 10 },
    new Date("2027-01-10T00:00:00Z"),
    false,
  );
  expect(plan.map((d) => d.why)).toEqual([
    "newest good backup", // 2027-W1
    "weekly keep (2026-W53)",
    "older than 0 days", // Thursday 31 December 2026: the same week as 3 January 2027
    "weekly keep (2026-W1)",
    "weekly keep (2025-W1)", // Monday 30 December 2024
    "weekly keep (2024-W52)",
    "weekly keep (2021-W1)",
    "weekly keep (2020-W53)", // Sunday 3 January 2021
    "older than 0 days",
    "weekly keep (2020-W52)",
  ]);
});

test("daily and monthly keys are UTC days and months", () => {
  const names = [
    at("2026-04-01T00:30:00Z"),
    at("2026-03-31T23:30:00Z"),
    at("2026-03-31T10:00:00Z"),
    at("2026-02-28T12:00:00Z"),
  ];
  const now = new Date("2026-04-02T00:00:00Z");
  expect(reasons(planRetention(names.map(good), { ...none, keepDaily: 3 }, now, false))).toEqual({
    [names[0]!]: "newest good backup",
    [names[1]!]: "daily keep (2026-03-31)",
    [names[2]!]: "older than 0 days",
    [names[3]!]: "daily keep (2026-02-28)",
  });
  expect(reasons(planRetention(names.map(good), { ...none, keepMonthly: 3 }, now, false))).toEqual({
    [names[0]!]: "newest good backup",
    [names[1]!]: "monthly keep (2026-03)",
    [names[2]!]: "older than 0 days",
    [names[3]!]: "monthly keep (2026-02)",
  });
});

test("a count stops at that many days, weeks or months", () => {
  const names = ["2026-03-05", "2026-03-04", "2026-03-03", "2026-03-02"].map((d) => at(`${d}T02:00:00Z`));
  const plan = planRetention(names.map(good), { ...none, keepDaily: 2 }, new Date("2026-03-10T00:00:00Z"), false);
  expect(plan.map((d) => d.keep)).toEqual([true, true, false, false]);
});

test("only a good backup holds a day or counts as newest; within one second the higher sequence is newer", () => {
  const same = "2026-03-05T02:00:00Z";
  const candidates = [
    { name: at("2026-03-06T02:00:00Z"), good: false, mirrored: true },
    good(at(same)),
    good(at(same, 1)),
    good(at("2026-03-04T02:00:00Z")),
  ];
  const plan = planRetention(candidates, { ...none, keepDaily: 2 }, new Date("2026-03-10T00:00:00Z"), false);
  expect(reasons(plan)).toEqual({
    [at("2026-03-06T02:00:00Z")]: "older than 0 days",
    [at(same, 1)]: "newest good backup",
    [at(same)]: "older than 0 days",
    [at("2026-03-04T02:00:00Z")]: "daily keep (2026-03-04)",
  });
  // Newest first, as the plan is shown.
  expect(plan.map((d) => d.name)).toEqual([
    at("2026-03-06T02:00:00Z"),
    at(same, 1),
    at(same),
    at("2026-03-04T02:00:00Z"),
  ]);
});

test("KEEP_DAYS keeps everything young enough; with off-site copies on, an uncopied backup stays however old", () => {
  const now = new Date("2026-03-10T12:00:00Z");
  const candidates = [
    good(at("2026-03-10T02:00:00Z")),
    good(at("2026-03-08T12:00:00Z")), // exactly 2 days old
    { name: at("2026-01-01T02:00:00Z"), good: true, mirrored: false },
    good(at("2026-01-02T02:00:00Z")),
  ];
  expect(reasons(planRetention(candidates, { ...none, keepDays: 2 }, now, true))).toEqual({
    [candidates[0]!.name]: "newest good backup",
    [candidates[1]!.name]: "within 2 days",
    [candidates[3]!.name]: "older than 2 days",
    [candidates[2]!.name]: "not yet copied off-site",
  });
  expect(
    planRetention(candidates, { ...none, keepDays: 2 }, now, false).find((d) => d.name === candidates[2]!.name)!.keep,
  ).toBe(false);
});

test("names that are not ours get no decision at all, so nothing can delete them", () => {
  const plan = planRetention(
    [good("notes.txt"), good("shinkei_backup_old_manual.sql.gz"), good(at("2020-01-01T00:00:00Z"))],
    none,
    new Date(),
    false,
  );
  expect(plan.map((d) => d.name)).toEqual([at("2020-01-01T00:00:00Z")]);
});
