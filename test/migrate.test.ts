import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { freshDatabase, databaseExists, dropDatabase, urlFor, type TestDatabase } from "./support/db.ts";
import { shinkei } from "./support/cli.ts";
import { migrate, migrationStatus } from "../src/migrations/migrate.ts";
import { migrations } from "../src/migrations/index.ts";
import { ShinkeiError } from "../src/errors.ts";
import postgres from "postgres";
import { until } from "./support/wait.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await freshDatabase("migrate");
  await migrate(db.sql);
});
afterAll(() => db.drop());

describe("migrations", () => {
  test("apply to an empty database, then a second run is a no-op", async () => {
    const empty = await freshDatabase("migrate_empty");
    try {
      const first = await migrate(empty.sql);
      expect(first.map((m) => m.version)).toEqual(migrations.map((m) => m.version));
      const tables =
        await empty.sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`;
      expect(tables.map((t) => t.table_name)).toEqual([
        "account_codes",
        "account_events",
        "account_notices",
        "backup_runs",
        "login_throttle",
        "mail_outbox",
        "recoveries",
        "schema_migrations",
        "sessions",
        "stories",
        "story_beats",
        "users",
        "worlds",
      ]);
      expect(await migrate(empty.sql)).toEqual([]);
      const status = await migrationStatus(empty.sql);
      expect(status.pending).toEqual([]);
      expect(status.current).toBe(migrations.at(-1)!.version);
    } finally {
      await empty.drop();
    }
  });

  test("an applied migration whose text changed is refused", async () => {
    const tampered = migrations.map((m, i) => (i === 0 ? { ...m, up: m.up + "\n-- edited" } : m));
    const error = await migrate(db.sql, tampered).catch((e) => e);
    expect(error).toBeInstanceOf(ShinkeiError);
    expect(error.code).toBe("MIGRATION_CHANGED");
    expect(error.message).toContain("migration 1 (schema) was changed after it was applied");
  });

  test("a failing migration leaves nothing of itself behind", async () => {
    const broken = [
      ...migrations,
      { version: 999, name: "broken", up: "create table half_done (id int); select 1/0;" },
    ];
    const error = await migrate(db.sql, broken).catch((e) => e);
    expect(error.code).toBe("MIGRATION_FAILED");
    const [t] = await db.sql`select to_regclass('public.half_done') as t`;
    expect(t!.t).toBeNull();
    expect((await migrationStatus(db.sql)).current).toBe(migrations.at(-1)!.version);
  });

  test("a migration whose lock is lost before its commit is rolled back, and says so", async () => {
    // The migration waits on a table this test holds, until the lock's connection is gone.
    await db.sql`create table if not exists mig_gate (id int)`;
    const gate = postgres(db.url, { max: 1, onnotice: () => {} });
    const held = await gate.reserve();
    await held`begin`;
    await held`lock table mig_gate in access share mode`;
    const gated = [
      ...migrations,
      {
        version: 998,
        name: "gated",
        up: "create table gated_half (id int); lock table mig_gate in access exclusive mode;",
      },
    ];
    const running = migrate(db.sql, gated).catch((e) => e);
    const waiting = () =>
      db.sql`select pid from pg_stat_activity where datname = ${db.name} and wait_event_type = 'Lock'
        and query like '%mig_gate in access exclusive%'`;
    await until("the migration to wait at the gate", async () => (await waiting()).length > 0);
    const holder = () =>
      db.sql`select pid from pg_stat_activity
        where datname = ${db.name} and application_name like 'shinkei migration (%'`;
    await db.sql`select pg_terminate_backend(pid) from (${holder()}) h`;
    await until("the lock's connection to end", async () => (await holder()).length === 0);
    await held`commit`;
    held.release();
    await gate.end();
    const error = await running;
    expect(error.code).toBe("MIGRATION_FAILED");
    expect(error.message).toContain("the migration lock was lost");
    expect(error.hint).toContain("Nothing of this migration was applied");
    const [t] = await db.sql`select to_regclass('public.gated_half') as t`;
    expect(t!.t).toBeNull();
    expect((await migrationStatus(db.sql)).current).toBe(migrations.at(-1)!.version);
  });

  test("users with data cannot be deleted by accident; emails are unique in any letter case", async () => {
    const [u] = await db.sql`insert into users (email, name, password_hash) values ('A@x.io', 'A', 'h') returning id`;
    await db.sql`insert into worlds (owner_id, name) values (${u!.id}, 'W')`;
    await expect(db.sql`delete from users where id = ${u!.id}`).rejects.toThrow(/foreign key/);
    await expect(db.sql`insert into users (email, name, password_hash) values ('a@X.IO', 'B', 'h')`).rejects.toThrow(
      /users_email_key/,
    );
  });
});

describe("shinkei migrate (binary)", () => {
  test("creates a missing database, and two processes at once apply each migration once", async () => {
    const name = `shinkei_test_created_${crypto.randomUUID().slice(0, 8)}`;
    try {
      const env = { DATABASE_URL: urlFor(name) };
      const [a, b] = await Promise.all([shinkei(["migrate"], env), shinkei(["migrate"], env)]);
      expect([a.code, b.code]).toEqual([0, 0]);
      expect(await databaseExists(name)).toBe(true);
      const out = a.stdout + b.stdout;
      expect(out.match(/applied 0001 schema/g)?.length).toBe(1);
      expect(out.match(/applied 0002 backup_runs/g)?.length).toBe(1);
      expect(out).toContain("schema is up to date");
      const status = await shinkei(["migrate", "status", "--json"], env);
      const parsed = JSON.parse(status.stdout);
      expect(parsed.applied.map((m: { version: number }) => m.version)).toEqual(migrations.map((m) => m.version));
      expect(parsed.pending).toEqual([]);
    } finally {
      await dropDatabase(name);
    }
  });
});
