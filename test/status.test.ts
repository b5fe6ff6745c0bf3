import { afterAll, beforeAll, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { shinkei } from "./support/cli.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { migrations } from "../src/migrations/index.ts";
import { issueCode } from "../src/auth/account-codes.ts";

const latest = migrations.at(-1)!.version;

let db: TestDatabase;
const codes: string[] = [];
beforeAll(async () => {
  db = await freshDatabase("status");
  await migrate(db.sql);
  const users = await db.sql`insert into users (email, name, password_hash)
    select 'u' || i || '@example.com', 'User ' || i, 'x' from generate_series(1, 3) i returning id`;
  const worlds =
    await db.sql`insert into worlds (owner_id, name) select ${users[0]!.id}, 'World ' || i from generate_series(1, 2) i
      returning id`;
  const stories = await db.sql`insert into stories (world_id, title) select ${worlds[0]!.id}, 'Story ' || i
      from generate_series(1, 4) i returning id`;
  await db.sql`insert into story_beats (story_id, position, content) select ${stories[0]!.id}, i, 'beat'
    from generate_series(0, 6) i`;
  // Two live reset codes, one expired, one for verification: only the first two are pending resets.
  const now = new Date();
  codes.push((await issueCode(db.sql, { userId: users[0]!.id, purpose: "password_reset", ttlMs: 3_600_000, now }))!);
  codes.push((await issueCode(db.sql, { userId: users[1]!.id, purpose: "password_reset", ttlMs: 3_600_000, now }))!);
  codes.push(
    (await issueCode(db.sql, {
      userId: users[2]!.id,
      purpose: "password_reset",
      ttlMs: 1_000,
      now: new Date(now.getTime() - 60_000),
    }))!,
  );
  codes.push((await issueCode(db.sql, { userId: users[2]!.id, purpose: "verify_email", ttlMs: 3_600_000, now }))!);
});
afterAll(() => db.drop());

test("status --json reports the rows the test inserted", async () => {
  const r = await shinkei(["status", "--json"], { DATABASE_URL: db.url });
  expect(r).toSucceed();
  const s = JSON.parse(r.stdout);
  expect(s.counts).toEqual({ users: 3, worlds: 2, stories: 4, story_beats: 7, sessions: 0 });
  expect(s.database).toBe(db.name);
  expect(s.schemaVersion).toBe(latest);
  expect(s.pendingMigrations).toBe(0);
  expect(s.sizeBytes).toBeGreaterThan(0);
  expect(s.pendingResetCodes).toBe(2);
  for (const code of codes) expect(r.stdout).not.toContain(code);
});

test("status prints a readable table with the same counts", async () => {
  const r = await shinkei(["status"], { DATABASE_URL: db.url });
  expect(r).toSucceed();
  expect(r.stdout).toContain(`database  ${db.name} on`);
  expect(r.stdout).toMatch(new RegExp(`schema\\s+version ${latest} of ${latest}$`, "m"));
  for (const [table, n] of [
    ["users", 3],
    ["worlds", 2],
    ["stories", 4],
    ["story_beats", 7],
  ] as const) {
    expect(r.stdout).toMatch(new RegExp(`^${table}\\s+${n}$`, "m"));
  }
  expect(r.stdout).toMatch(/^resets\s+2 reset codes pending/m);
  for (const code of codes) expect(r.stdout).not.toContain(code);
});
