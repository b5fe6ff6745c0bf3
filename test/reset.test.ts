import postgres from "postgres";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { freshDatabase, snapshot, type TestDatabase } from "./support/db.ts";
import { shinkei } from "./support/cli.ts";
import { until } from "./support/wait.ts";
import { withAdvisoryLock } from "../src/pg/db.ts";
import { Terminal } from "./support/pty.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";
import { migrate, migrationStatus } from "../src/migrations/migrate.ts";
import { migrations } from "../src/migrations/index.ts";
import { demoUsers } from "../src/migrations/seed.ts";
import { resetPhrases } from "../src/guarded/reset.ts";

let db: TestDatabase;
let dir: string;
let env: Record<string, string>;
const cheapHashing = { ARGON2_MEMORY_KIB: "4096", ARGON2_TIME_COST: "1" };

async function freshData() {
  await db.sql`drop schema public cascade`;
  await db.sql`create schema public`;
  await migrate(db.sql);
  await seedSample(db.sql, "real");
}
const files = async () => (await readdir(dir)).filter((n) => !n.endsWith(".partial"));

/** Type reset's phrases as a person would; at prompt `stop.at` (0-based), `stop.instead` acts instead. */
async function answerPhrases(t: Terminal, stop?: { at: number; instead: (phrase: string) => Promise<void> }) {
  for (const [i, phrase] of resetPhrases.entries()) {
    await t.waitFor(`Type ${phrase} to continue`);
    await Bun.sleep(50);
    if (i === stop?.at) return stop.instead(phrase);
    await t.type(phrase);
    await t.enter();
  }
}

beforeAll(async () => {
  db = await freshDatabase("reset");
});
beforeEach(async () => {
  await freshData();
  dir = await tempDir("reset");
  env = { DATABASE_URL: db.url, BACKUP_DIR: dir, NO_COLOR: "1", ...cheapHashing };
});
afterAll(() => db.drop());

describe("in a terminal", () => {
  test("the happy path: three phrases, a verified backup, demo data, and the way back", async () => {
    const before = await snapshot(db.sql);
    const t = await Terminal.start(["reset"], env);
    try {
      await t.waitFor(`reset deletes ALL data in ${db.name} on`);
      const screen = await t.waitFor("Type DELETE ALL DATA");
      expect(screen).toMatch(/users\s+3/);
      expect(screen).toMatch(/story_beats\s+30/);
      await answerPhrases(t);
      expect(await t.exitCode()).toBe(0);
      const out = await t.screen();
      expect(out).toContain("rows now       users 3, worlds 6, stories 12, story_beats 60, sessions 0");
      // The undo line, whole (it is wider than the terminal), to be run exactly as printed.
      const undo = /^undo with\s+shinkei (.+?)\s*$/m.exec(await t.screen(true))![1]!.split(" ");
      const users = await db.sql`select email from users order by email`;
      expect(users.map((u) => u.email)).toEqual(demoUsers.map((u) => u.email));

      // The printed command brings the old data back, exactly. The test database is the superuser's
      // (as in the local default), so the line says --allow-superuser: the restore needs it there.
      expect(undo).toContain("--allow-superuser");
      expect(undo).toContain(db.name);
      const r = await shinkei(undo, env);
      expect(r).toSucceed();
      expect(await snapshot(db.sql)).toEqual(before);
    } finally {
      await t.close();
    }
  });

  for (const wrongAt of [0, 1, 2]) {
    test(`phrase ${wrongAt + 1} mistyped: exit 1, nothing changed, no backup`, async () => {
      const before = await snapshot(db.sql);
      const t = await Terminal.start(["reset"], env);
      try {
        await answerPhrases(t, {
          at: wrongAt,
          async instead(phrase) {
            await t.type(phrase.toLowerCase());
            await t.enter();
          },
        });
        expect(await t.exitCode()).toBe(1);
        expect(await t.screen()).toContain("aborted, nothing was changed");
      } finally {
        await t.close();
      }
      expect(await snapshot(db.sql)).toEqual(before);
      expect(await files()).toEqual([]);
    });

    test(`Ctrl-C at prompt ${wrongAt + 1}: exit 130, nothing changed`, async () => {
      const before = await snapshot(db.sql);
      const t = await Terminal.start(["reset"], env);
      try {
        await answerPhrases(t, {
          at: wrongAt,
          async instead() {
            await t.type("DELETE");
            await t.ctrlC();
          },
        });
        expect(await t.exitCode()).toBe(130);
      } finally {
        await t.close();
      }
      expect(await snapshot(db.sql)).toEqual(before);
      expect(await files()).toEqual([]);
    });
  }
});

describe("without a terminal", () => {
  test("refused without flags, refused with a wrong --confirm-database, runs with both", async () => {
    const before = await snapshot(db.sql);
    let r = await shinkei(["reset"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`pass --force --confirm-database ${db.name} to run it unattended`);
    r = await shinkei(["reset", "--force"], env);
    expect(r.code).toBe(1);
    r = await shinkei(["reset", "--force", "--confirm-database", "production_db"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`does not name the target database "${db.name}"`);
    expect(await snapshot(db.sql)).toEqual(before);
    expect(await files()).toEqual([]);

    r = await shinkei(["reset", "--force", "--confirm-database", db.name, "--no-seed"], env);
    expect(r).toSucceed();
    expect(r.stdout).toContain("rows now       users 0, worlds 0, stories 0, story_beats 0, sessions 0");
    const list = JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ reason: "pre-reset", check: "ok" });
    expect(list[0].counts.users).toBe(3);
    expect(await shinkei(["backup", "verify", list[0].path], env)).toSucceed();
  });

  test("--dry-run shows the counts and changes nothing", async () => {
    const before = await snapshot(db.sql);
    const r = await shinkei(["reset", "--dry-run"], env);
    expect(r).toSucceed();
    expect(r.stdout).toMatch(/users\s+3/);
    expect(r.stdout).toContain("dry run: nothing was changed");
    expect(await snapshot(db.sql)).toEqual(before);
  });

  test("production is refused, even with --force, unless --allow-production", async () => {
    const before = await snapshot(db.sql);
    for (const prod of [{ SHINKEI_ENV: "production" }, { NODE_ENV: "production" }] as Record<string, string>[]) {
      const r = await shinkei(["reset", "--force", "--confirm-database", db.name], { ...env, ...prod });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("SHINKEI_ENV/NODE_ENV is production");
    }
    expect(await snapshot(db.sql)).toEqual(before);
    const r = await shinkei(["reset", "--force", "--confirm-database", db.name, "--allow-production"], {
      ...env,
      SHINKEI_ENV: "production",
    });
    expect(r).toSucceed();
  });

  test("a failing safety backup deletes nothing", async () => {
    const before = await snapshot(db.sql);
    const blocker = join(dir, "file");
    await writeFile(blocker, "not a folder");
    const r = await shinkei(["reset", "--force", "--confirm-database", db.name], {
      ...env,
      BACKUP_DIR: join(blocker, "backups"),
    });
    expect(r.code).toBe(1);
    expect(r.stderr.split("\n")[0]).toMatch(/^✖ /);
    expect(await snapshot(db.sql)).toEqual(before);
  });
});

/** Sessions of this database's that wait on a table lock, running a statement that matches `like`. */
const waitingOn = async (like: string) =>
  db.sql<{ pid: number }[]>`select pid from pg_stat_activity
    where datname = ${db.name} and wait_event_type = 'Lock' and query like ${like}`;

/**
 * Holds a share lock on `table` in an open transaction: the statement matching `like` (the reset's
 * DROP SCHEMA, a down step) waits for it, after the safety backup (pg_dump's own share lock does not
 * wait) and before the commit.
 */
async function gateOn(table: string, like: string) {
  const gate = postgres(db.url, { max: 1, onnotice: () => {} });
  const tx = await gate.reserve();
  await tx`begin`;
  await tx.unsafe(`lock table ${table} in access share mode`);
  return {
    reached: () => until("the command to wait at the gate", async () => (await waitingOn(like)).length > 0),
    async open() {
      await tx`commit`;
      tx.release();
      await gate.end();
    },
  };
}
const gateOnUsers = () => gateOn("users", "DROP SCHEMA%");

/** End the maintenance lock's connection of the command `what` (a network blip, an administrator). */
async function loseTheLock(what: string) {
  const name = `shinkei ${what} (%`;
  const holder = () =>
    db.sql`select pid from pg_stat_activity where datname = ${db.name} and application_name like ${name}`;
  expect(await holder()).toHaveLength(1);
  await db.sql`select pg_terminate_backend(pid) from (${holder()}) h`;
  await until("the lock's connection to end", async () => (await holder()).length === 0);
}

describe("the lock and the commit", () => {
  test("the maintenance lock lost between the safety backup and the commit: rolled back, nothing deleted", async () => {
    const before = await snapshot(db.sql);
    const gate = await gateOnUsers();
    const running = shinkei(["reset", "--force", "--confirm-database", db.name], env);
    await gate.reached();
    // Another operation could take the lock now.
    await loseTheLock("reset");
    await gate.open();
    const r = await running;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the reset lock was lost");
    expect(await snapshot(db.sql)).toEqual(before);
  });

  test("rows that cannot be counted after the commit: the reset is said done, with its backup and undo", async () => {
    // A table outside public, which the reset leaves alone and counts afterwards.
    await db.sql.unsafe("create schema other; create table other.blocker (x int)");
    const blocker = postgres(db.url, { max: 1, onnotice: () => {} });
    const held = await blocker.reserve();
    const gate = await gateOnUsers();
    const t = await Terminal.start(["reset", "--force", "--confirm-database", db.name], env);
    try {
      await gate.reached();
      // Taken after the safety backup read it: only the count after the commit waits for this.
      await held`begin`;
      await held`lock table other.blocker in access exclusive mode`;
      const pid = (await held<{ pid: number }[]>`select pg_backend_pid() as pid`)[0]!.pid;
      await gate.open();
      const count = await until(
        "the count after the commit to wait",
        async () =>
          (
            await db.sql<{ pid: number }[]>`select pid from pg_stat_activity
              where datname = ${db.name} and ${pid}::int4 = any(pg_blocking_pids(pid))`
          )[0],
      );
      await db.sql`select pg_terminate_backend(${count.pid}::int4)`;
      expect(await t.exitCode()).toBe(0);
      const out = await t.screen(true);
      expect(out).toContain("reset done");
      expect(out).not.toContain("nothing was deleted");
      expect(out).toContain("rows now       could not be read after the reset committed");
      expect(out).toMatch(/^safety backup\s+\S+ \(verified\)/m);
      expect(out).toMatch(/^undo with\s+shinkei backup --restore --backup-file \S+ --yes/m);
      const users = await db.sql`select email from users order by email`;
      expect(users.map((u) => u.email)).toEqual(demoUsers.map((u) => u.email));
    } finally {
      await t.close();
      await held`rollback`.catch(() => {});
      held.release();
      await blocker.end();
      await db.sql`drop schema if exists other cascade`;
    }
  });
});

describe("seed and migrate down", () => {
  test("seed refuses a database with users and loads into an empty one", async () => {
    let r = await shinkei(["seed"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("already has 3 user(s)");
    await db.sql`truncate users, sessions, worlds, stories, story_beats cascade`;
    r = await shinkei(["seed"], env);
    expect(r).toSucceed();
    const [n] = await db.sql`select count(*) as n from story_beats`;
    expect(n!.n).toBe(60);
    // Demo addresses get no mail, so they count as verified (REQUIRE_EMAIL_VERIFICATION cannot lock them out).
    const [unverified] = await db.sql`select count(*) as n from users where email_verified_at is null`;
    expect(unverified!.n).toBe(0);
  });

  test("seed leaves a user who registers while it runs alone: not verified by it, not mixed in", async () => {
    await db.sql`truncate users, sessions, worlds, stories, story_beats cascade`;
    // A gate: seed's first world waits on a lock this test holds (after its count found no users).
    await db.sql.unsafe(`create function gate() returns trigger language plpgsql as $$ begin
        perform pg_advisory_xact_lock_shared(4243); return null; end $$;
      create trigger gate after insert on worlds for each statement execute function gate()`);
    const gate = postgres(db.url, { max: 1, onnotice: () => {} });
    const other = postgres(db.url, { max: 1, onnotice: () => {} });
    try {
      await gate`select pg_advisory_lock(4243)`;
      const seeding = shinkei(["seed"], env);
      const waiting = async (event: string) =>
        (await gate`select 1 from pg_stat_activity where datname = ${db.name} and wait_event = ${event}`).length > 0;
      await until("seed to wait at the gate", () => waiting("advisory"));
      // Someone registers meanwhile (the server is up): the seed must not verify or mix with that account.
      let registered = false;
      const registering = other`insert into users (email, name, password_hash)
          values ('real@example.com', 'Real', 'h')`.then(() => (registered = true));
      await until("the registration to commit or wait", async () => registered || (await waiting("relation")));
      await gate`select pg_advisory_unlock(4243)`;
      const r = await seeding;
      await registering;
      const [real] = await db.sql`select email_verified_at from users where email = 'real@example.com'`;
      expect(real!.email_verified_at).toBeNull();
      // Either seed refused (the database was no longer empty) or it ran before the registration.
      if (r.code === 0) expect(r.stdout).toContain("seeded 3 demo users");
      else expect(r.stderr).toContain("already has 1 user(s)");
    } finally {
      await gate.end();
      await other.end();
    }
  });

  test("migrate down is guarded: refused unattended, then backs up before it drops", async () => {
    let r = await shinkei(["migrate", "down"], env);
    expect(r.code).toBe(1);
    const last = migrations.at(-1)!;
    expect(r.stdout).toContain(`migrate down undoes ${String(last.version).padStart(4, "0")} ${last.name}`);
    expect(r.stdout).toContain(last.down!.trim().split("\n")[0]!);
    expect((await migrationStatus(db.sql)).current).toBe(last.version);
    r = await shinkei(["migrate", "down", "--force", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    expect((await migrationStatus(db.sql)).current).toBe(last.version - 1);
    const list = JSON.parse((await shinkei(["backup", "--list", "--json"], env)).stdout);
    expect(list[0]).toMatchObject({ reason: "pre-migrate" });
    expect(list[0].counts.users).toBe(3);
  });

  test("migrate down with its lock lost before the commit: rolled back, the migration still applied", async () => {
    const last = migrations.at(-1)!;
    const table = /^alter table (\w+)/.exec(last.down!)![1]!;
    const gate = await gateOn(table, "alter table%");
    const running = shinkei(["migrate", "down", "--force", "--confirm-database", db.name], env);
    try {
      await gate.reached();
      await loseTheLock("migrate down");
    } finally {
      await gate.open();
    }
    const r = await running;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the migrate down lock was lost");
    expect((await migrationStatus(db.sql)).current).toBe(last.version);
  });

  test("migrate down --wait undoes only the step it showed and confirmed, not the one below it", async () => {
    const last = migrations.at(-1)!;
    const lock = postgres(db.url, { max: 1, onnotice: () => {} });
    try {
      // Two operators (or a retried script) confirm "undo the newest" while a backup holds the lock.
      const runs = await withAdvisoryLock(
        lock,
        "maintenance",
        async () => {
          const runs = [1, 2].map(() =>
            shinkei(["migrate", "down", "--force", "--confirm-database", db.name, "--wait"], env),
          );
          await until(
            "both to wait on the maintenance lock",
            async () =>
              (
                await lock`select 1 from pg_stat_activity
                  where application_name like 'shinkei migrate down%' and wait_event = 'advisory'`
              ).length === 2,
          );
          return runs;
        },
        { wait: true, what: "a test" },
      );
      const results = await Promise.all(runs);
      for (const r of results)
        expect(r.stdout).toContain(`migrate down undoes ${String(last.version).padStart(4, "0")}`);
      expect(results.filter((r) => r.code === 0).length).toBe(1);
      const refused = results.find((r) => r.code !== 0)!;
      expect(refused.stderr).toContain(`migration ${last.version} (${last.name}) is no longer the newest applied`);
      expect((await migrationStatus(db.sql)).current).toBe(last.version - 1);
    } finally {
      await lock.end();
    }
  });
});
