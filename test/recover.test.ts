import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { tmpdir } from "node:os";
import postgres from "postgres";
import { freshDatabase, snapshot, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { binaryPath, shinkei, takeBackup } from "./support/cli.ts";
import { tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";
import { copyBackup, slowToLoad } from "./support/backup.ts";
import { Terminal } from "./support/pty.ts";
import { startTestServer } from "./support/server.ts";
import { withAdvisoryLock } from "../src/pg/db.ts";
import { RECOVER_PREFIX } from "../src/recover/source.ts";
import { buildPlan } from "../src/recover/plan.ts";
import { applyRows } from "../src/recover/apply.ts";
import { until } from "./support/wait.ts";
import { ageKeys, aliceBeat, deleteWorld, digest, recordOf, startingState } from "./support/recover.ts";

// Real databases, backups and processes: 5 s is too tight on a busy 2-core machine.
setDefaultTimeout(90_000);

let db: TestDatabase;
let env: Record<string, string>;
/*
 * A server of this file's own: these tests count the scratch databases on the whole server, and
 * test files running beside this one (bun test --parallel) make scratch databases on the shared one.
 */
let server: TestCluster;
let serverUrl: string;
/** One connection to the server's postgres database for the whole file: counting, copying and dropping databases. */
let admin: postgres.Sql;
/*
 * The database every test starts from (migrated; alice's and bob's rows), made once: each test gets
 * a copy of it (CREATE DATABASE ... TEMPLATE: the same rows, ids and all), and the tests that start
 * with a backup of that state get a copy of one backup taken of it once, not a backup of their own.
 */
let template: string;
let startBackup: string;

const scratchDatabases = async () =>
  (await admin`select datname from pg_database where datname like 'shinkei\\_recover\\_%'`).map(
    (r) => r.datname as string,
  );

/** The backup of the starting state, copied into this test's BACKUP_DIR as one of its database: its path there. */
const backupOfTheStart = () => copyBackup(startBackup, env.BACKUP_DIR!, db.name);

beforeAll(async () => {
  server = await startCluster();
  serverUrl = server.url();
  admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
  ({ template, backup: startBackup } = await startingState(serverUrl));
});
afterAll(async () => {
  await admin.end();
  await server.stop();
});

beforeEach(async () => {
  db = await freshDatabase("recover", serverUrl, template);
  env = { DATABASE_URL: db.url, BACKUP_DIR: await tempDir("recover") };
});
afterEach(() => db.drop());

describe("recover one user's rows", () => {
  test("--from latest takes only a backup of this database: another's is refused, naming it", async () => {
    // The starting backup as it is: its manifest names the database it was taken of, not this copy.
    await copyBackup(startBackup, env.BACKUP_DIR!);
    const before = await snapshot(db.sql);
    const r = await shinkei(
      ["recover", "--user", "alice@example.com", "--from", "latest", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`no backups of "${db.name}" in ${env.BACKUP_DIR}`);
    expect(r.stderr).toContain("name a file with --from");
    expect(await snapshot(db.sql)).toEqual(before);
    expect(await scratchDatabases()).toEqual([]);
  });

  test("alice's deleted world comes back exactly; bob's writes since the backup stay; a record is kept", async () => {
    const alice = await digest(db.sql, "alice@example.com");
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    // Bob keeps writing after the backup: a new world, a new beat, an edit.
    const [bobWorld] = await db.sql`insert into worlds (owner_id, name) select id, 'bob later' from users
        where email = 'bob@example.com' returning id`;
    await db.sql`insert into stories (world_id, title) values (${bobWorld!.id}, 'new story')`;
    await db.sql`update story_beats set content = 'bob edited' where story_id in (select s.id from stories s
      join worlds w on w.id = s.world_id join users u on u.id = w.owner_id where u.email = 'bob@example.com')
      and position = 0`;
    const bob = await digest(db.sql, "bob@example.com");
    const sessions = await db.sql`select * from sessions order by id`;
    expect((await digest(db.sql, "alice@example.com")).rows).toBe(alice.rows - 9);

    const r = await shinkei(
      ["recover", "--user", "alice@example.com", "--from", "latest", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(r.stderr).toBe("");
    expect(r).toSucceed();
    expect(r.stdout).toContain("users -> worlds  (worlds.owner_id references users.id)");
    expect(r.stdout).toContain("stories -> story_beats  (story_beats.story_id references stories.id)");
    expect(r.stdout).toContain("not followed: sessions");
    expect(r.stdout).toMatch(/^story_beats\s+6\s+0\s+0\s+6$/m);
    expect(r.stdout).toContain("restored       worlds 1, stories 2, story_beats 6");

    expect(await digest(db.sql, "alice@example.com")).toEqual(alice);
    expect(await digest(db.sql, "bob@example.com")).toEqual(bob);
    expect(await db.sql`select * from sessions order by id`).toEqual(sessions);
    expect(await scratchDatabases()).toEqual([]);

    // No full backup of the database by default: the safety copy is the rows, beside the record.
    expect(r.stdout).not.toContain("safety backup");
    // the backup recovered from
    expect((await readdir(env.BACKUP_DIR!)).filter((n) => n.endsWith(".manifest.json"))).toHaveLength(1);
    const recordPath = recordOf(r.stdout);
    const record = JSON.parse(await readFile(recordPath, "utf8"));
    expect(record).toMatchObject({
      scope: { kind: "user", email: "alice@example.com" },
      mode: "default",
      tables: { worlds: { restored: 1 }, story_beats: { restored: 6 } },
    });
    const undo = JSON.parse(await readFile(join(env.BACKUP_DIR!, record.undo.file), "utf8"));
    expect(undo.tables.map((t: { table: string; inserted: unknown[] }) => [t.table, t.inserted.length])).toEqual([
      ["users", 0],
      ["worlds", 1],
      ["stories", 2],
      ["story_beats", 6],
    ]);
    const h = await shinkei(["recover", "--history", "--json"], env);
    expect(JSON.parse(h.stdout)).toEqual([{ ...record, path: recordPath, state: "applied" }]);
    expect((await shinkei(["recover", "--history"], env)).stdout).toMatch(
      new RegExp(`${record.id.slice(0, 8)} .* alice@example\\.com .* worlds 1, stories 2, story_beats 6 +applied`),
    );

    // Again: nothing is missing now, and `latest` is not the safety copy just taken.
    const again = await shinkei(
      ["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(again).toSucceed();
    expect(again.stdout).toContain("nothing to recover");
  });

  test("--revert-changed puts an edited beat back, the default keeps it; rows created since always stay", async () => {
    const original = await aliceBeat(db.sql, "story 1", 1);
    await backupOfTheStart();
    await db.sql`update story_beats set content = 'edited after the backup' where id = ${original!.id}`;
    // Her name changed since, and so did how she signs in (a new password after a break-in, say).
    const [account] = await db.sql`update users set name = 'Alice B', password_hash = 'the new one',
        email_verified_at = now() - interval '1 hour' where email = 'alice@example.com'
      returning password_hash, email_verified_at`;
    await db.sql`delete from story_beats where id = ${(await aliceBeat(db.sql, "story 1", 2))!.id}`;
    const [created] = await db.sql`insert into story_beats (story_id, position, content)
        values (${original!.story_id}, 7, 'written since') returning *`;

    const preview = await shinkei(["recover", "--user", "alice@example.com", "--dry-run", "--json"], env);
    expect(preview).toSucceed();
    const beats = JSON.parse(preview.stdout).tables.find((t: { table: string }) => t.table === "story_beats");
    expect(beats.counts).toEqual({ missing: 1, changed: 1, createdSince: 1, same: 10 });
    expect(beats.changed[0].columns).toEqual(["content"]);
    const users = JSON.parse(preview.stdout).tables.find((t: { table: string }) => t.table === "users");
    expect(users.changed.map((c: { columns: string[] }) => c.columns)).toEqual([["name"]]);

    const plain = await shinkei(
      ["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(plain).toSucceed();
    expect((await aliceBeat(db.sql, "story 1", 2))!.content).toBe("beat 2");
    expect((await aliceBeat(db.sql, "story 1", 1))!.content).toBe("edited after the backup");
    expect(plain.stdout).toContain("kept (changed) users 1, story_beats 1");

    const revert = await shinkei(
      ["recover", "--user", "alice@example.com", "--revert-changed", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(revert).toSucceed();
    expect(revert.stdout).toContain("reverted       users 1, story_beats 1");
    expect(await aliceBeat(db.sql, "story 1", 1)).toEqual(original);
    // Her name is the backup's again; the password and verification she set since stay hers.
    const [alice] = await db.sql`select name, password_hash, email_verified_at from users
      where email = 'alice@example.com'`;
    expect(alice).toEqual({ name: "alice", ...account });
    expect((await db.sql`select * from story_beats where id = ${created!.id}`)[0]).toEqual(created);
  });

  test("--revert-changed keeps a password changed while it runs, not the one it read before", async () => {
    // The backup's state as the source: a copy of the database every test starts from.
    const source = await freshDatabase("recover_source", serverUrl, template);
    const holder = await db.sql.reserve();
    try {
      await db.sql`update users set name = 'Alice B', password_hash = 'set after the backup'
        where email = 'alice@example.com'`;
      const plan = await buildPlan(db.sql, source.url, { kind: "user", email: "alice@example.com" }, "the start");
      // She changes her password again as the recovery runs: it read her row before, and waits for it.
      await holder`begin`;
      await holder`update users set password_hash = 'changed during the recovery' where email = 'alice@example.com'`;
      const applying = db.sql.begin((tx) => applyRows(tx, plan, true));
      await until("the recovery waiting for alice's row", async () => {
        const [w] = await admin`select count(*)::int as n from pg_stat_activity
          where datname = ${db.name} and wait_event_type = 'Lock'`;
        return w!.n > 0;
      });
      await holder`commit`;
      await applying;
    } finally {
      holder.release();
      await source.drop();
    }
    const [alice] = await db.sql`select name, password_hash from users where email = 'alice@example.com'`;
    expect(alice).toEqual({ name: "alice", password_hash: "changed during the recovery" });
  });

  test("positions taken since the backup stop the recovery, naming every such row; nothing is applied", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 2");
    const gone = [await aliceBeat(db.sql, "story 1", 2), await aliceBeat(db.sql, "story 2", 0)];
    for (const b of gone) {
      await db.sql`delete from story_beats where id = ${b!.id}`;
      await db.sql`insert into story_beats (story_id, position, content)
        values (${b!.story_id}, ${b!.position}, 'a different beat')`;
    }
    const before = await snapshot(db.sql);
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("2 conflicts: conflict while restoring missing rows of story_beats");
    for (const b of gone)
      expect(r.stderr).toContain(`Key (story_id, "position")=(${b!.story_id}, ${b!.position}) already exists`);
    expect(r.stderr).toContain("Nothing was applied");
    // World 2 (whose rows had no conflict) did not come back either: all or nothing.
    expect(await snapshot(db.sql)).toEqual(before);
    expect(await scratchDatabases()).toEqual([]);
  });

  test("a wrong confirmation changes nothing", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const before = await snapshot(db.sql);
    const t = await Terminal.start(["recover", "--user", "alice@example.com"], { ...env, NO_COLOR: "1" });
    try {
      const screen = await t.waitFor("Type alice@example.com to bring these rows back");
      expect(screen).toMatch(/worlds\s+1\s+0\s+0\s+1/);
      await t.type("alice@example.org");
      await t.enter();
      expect(await t.exitCode()).toBe(1);
      expect(await t.screen()).toContain("aborted, nothing was changed");
    } finally {
      await t.close();
    }
    expect(await snapshot(db.sql)).toEqual(before);
    expect(await scratchDatabases()).toEqual([]);
    expect((await readdir(env.BACKUP_DIR!)).filter((n) => n.endsWith(".recovered.json"))).toEqual([]);
  });

  test("an unknown email, a bad id, or --at: clear errors, nothing changed", async () => {
    await backupOfTheStart();
    const before = await snapshot(db.sql);
    const r = await shinkei(["recover", "--user", "nobody@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no account nobody@example\.com in shinkei_backup_\S+ nor in the live database/);
    const unknownId = crypto.randomUUID();
    const byId = await shinkei(["recover", "--user-id", unknownId, "--yes", "--confirm-database", db.name], env);
    expect(byId.code).toBe(1);
    expect(byId.stderr).toContain(`no user ${unknownId} in shinkei_backup_`);
    const id = await shinkei(["recover", "--world", "42", "--yes", "--confirm-database", db.name], env);
    expect(id.code).toBe(2);
    expect(id.stderr).toContain('--world needs an id (a UUID), not "42"');
    const at = await shinkei(["recover", "--user", "alice@example.com", "--at", "2026-01-01T10:00:00Z"], env);
    expect(at.code).toBe(2);
    expect(at.stderr).toContain("needs the WAL archive (WAL_ARCHIVE=stream)");
    const unattended = await shinkei(["recover", "--user", "alice@example.com"], env);
    expect(unattended.code).toBe(1);
    expect(unattended.stderr).toContain(`pass --yes --confirm-database ${db.name} to run it unattended`);
    expect(await snapshot(db.sql)).toEqual(before);
    expect(await scratchDatabases()).toEqual([]);
  });

  test("the incident: reset, alice registers again, recover --into-current-account; her worlds return", async () => {
    const oldWorlds = (
      await db.sql`select w.name from worlds w join users u on u.id = w.owner_id where u.email = 'alice@example.com'
        order by w.name`
    ).map((r) => r.name);
    const reset = await shinkei(["reset", "--force", "--confirm-database", db.name, "--no-seed"], env);
    expect(reset).toSucceed();
    const server = await startTestServer(db);
    try {
      const account = { email: "alice@example.com", password: "a brand new password", name: "Alice again" };
      expect((await server.api("/api/v1/auth/register", { method: "POST", json: account })).status).toBe(201);

      const refused = await shinkei(
        ["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
        env,
      );
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain("now belongs to a different, newer account");
      expect(refused.stderr).toContain("--into-current-account");
      expect(refused.stdout).toMatch(
        /in the backup: \S+  alice@example\.com  "alice" .* owns worlds 2, stories 4, story_beats 12/,
      );
      expect(refused.stdout).toMatch(
        /now: +\S+  alice@example\.com  "Alice again" .* owns worlds 0, stories 0, story_beats 0/,
      );

      const r = await shinkei(
        ["recover", "--user", "alice@example.com", "--into-current-account", "--yes", "--confirm-database", db.name],
        env,
      );
      expect(r.stderr).toBe("");
      expect(r).toSucceed();
      expect(r.stdout).toContain("restored       worlds 2, stories 4, story_beats 12");
      expect(r.stdout).toContain("sessions       not restored");

      const login = await server.api("/api/v1/auth/login", {
        method: "POST",
        json: { email: account.email, password: account.password },
      });
      expect(login.status).toBe(200);
      const { token } = await login.json();
      const worlds = await (await server.api("/api/v1/worlds", { token })).json();
      expect(worlds.worlds.map((w: { name: string }) => w.name).sort()).toEqual(oldWorlds);
      expect(worlds.worlds.map((w: { storyCount: number }) => w.storyCount)).toEqual([2, 2]);
      // Only alice's rows came back: bob, who was reset away too, was not part of this recovery.
      expect((await db.sql`select email from users`).map((u) => u.email)).toEqual(["alice@example.com"]);
      expect((await db.sql`select count(*)::int as n from sessions`)[0]!.n).toBe(1); // the login just now

      // Undone: the worlds given to the current account go; the account and its login stay.
      const undo = await shinkei(
        ["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name],
        env,
      );
      expect(undo).toSucceed();
      expect(undo.stdout).toContain("removed        worlds 2, stories 4, story_beats 12");
      expect((await (await server.api("/api/v1/worlds", { token })).json()).worlds).toEqual([]);
    } finally {
      await server.stop();
    }
  });

  test("--restore-account brings the old account back, only while the new one owns nothing", async () => {
    const [old] = await db.sql`select id from users where email = 'alice@example.com'`;
    const alice = await digest(db.sql, "alice@example.com");
    await backupOfTheStart();
    for (const w of ["alice@example.com world 1", "alice@example.com world 2"])
      await deleteWorld(db.sql, "alice@example.com", w);
    await db.sql`delete from users where id = ${old!.id}`;
    const [fresh] =
      await db.sql`insert into users (email, name, password_hash) values ('Alice@Example.com', 'new alice', 'h')
        returning id`;
    const [w] = await db.sql`insert into worlds (owner_id, name) values (${fresh!.id}, 'written by the new account')
        returning id`;

    const refused = await shinkei(
      ["recover", "--user", "alice@example.com", "--restore-account", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("owns data (worlds 1): --restore-account removes only an empty account");
    await db.sql`delete from worlds where id = ${w!.id}`;
    // Its history of resets and verifications would go with it by cascade, beyond any undo.
    await db.sql`insert into account_events (user_id, kind) values (${fresh!.id}, 'password_reset')`;
    const history = await shinkei(
      ["recover", "--user", "alice@example.com", "--restore-account", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(history.code).toBe(1);
    expect(history.stderr).toContain("owns data (account_events 1): --restore-account removes only an empty account");
    await db.sql`delete from account_events where user_id = ${fresh!.id}`;

    const r = await shinkei(
      ["recover", "--user", "alice@example.com", "--restore-account", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(r).toSucceed();
    expect(r.stdout).toContain(`removed        the new, empty account ${fresh!.id}`);
    expect((await db.sql`select id from users where lower(email) = 'alice@example.com'`).map((u) => u.id)).toEqual([
      old!.id,
    ]);
    expect(await digest(db.sql, "alice@example.com")).toEqual(alice);
  });

  test("--restore-account: history the new account gained while recover waited stops it; nothing goes", async () => {
    const [old] = await db.sql`select id from users where email = 'alice@example.com'`;
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 2");
    await db.sql`delete from users where id = ${old!.id}`;
    const [fresh] = await db.sql`insert into users (email, name, password_hash)
        values ('alice@example.com', 'new alice', 'h') returning id`;
    const lock = postgres(db.url, { max: 1, onnotice: () => {} });
    try {
      // A backup holds the maintenance lock (a test stands in for it) while recover, planned on an
      // empty account, queues behind it; meanwhile the new account verifies its email.
      const queued = await withAdvisoryLock(
        lock,
        "maintenance",
        async () => {
          const p = Bun.spawn(
            [binaryPath, "recover", "--user", "alice@example.com", "--restore-account", "--wait", "--yes"].concat([
              "--confirm-database",
              db.name,
            ]),
            { env: { PATH: process.env.PATH!, TMPDIR: tmpdir(), ...env }, stdout: "pipe", stderr: "pipe" },
          );
          await until(
            "recover to wait on the maintenance lock",
            async () =>
              (
                await lock`select 1 from pg_stat_activity
                  where application_name like 'shinkei recover%' and wait_event = 'advisory'`
              ).length > 0,
          );
          await db.sql`insert into account_events (user_id, kind) values (${fresh!.id}, 'verify_email')`;
          return p;
        },
        { wait: true, what: "a test" },
      );
      const stderr = await new Response(queued.stderr).text();
      expect(await queued.exited).toBe(1);
      expect(stderr).toContain("account_events");
      // The new account and its history are still here: a cascade would take them beyond any undo.
      expect((await db.sql`select id from users where lower(email) = 'alice@example.com'`).map((u) => u.id)).toEqual([
        fresh!.id,
      ]);
      expect((await db.sql`select kind from account_events where user_id = ${fresh!.id}`).length).toBe(1);
    } finally {
      await lock.end();
    }
  });

  test("her account under a new email, her old one taken: the operator is told and chooses; nothing goes", async () => {
    const [her] = await db.sql`select id from users where email = 'alice@example.com'`;
    const alice = await digest(db.sql, "alice@example.com");
    const [world] = await db.sql`select id from worlds where name = 'alice@example.com world 2'`;
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 2");
    await db.sql`update users set email = 'alice.new@example.com' where id = ${her!.id}`;
    const [other] = await db.sql`insert into users (email, name, password_hash)
        values ('alice@example.com', 'someone', 'h') returning *`;
    // She changed her email and a stranger took the old one, or her account was taken over and she
    // registered again: the data cannot tell. No choice: refused, both accounts named.
    const told =
      `the account in the backup (${her!.id}) is still here, as alice.new@example.com, and ` +
      `alice@example.com now belongs to another account (${other!.id})`;
    const plain = await shinkei(
      ["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(plain.code).toBe(1);
    expect(plain.stdout).toContain(told);
    expect(plain.stderr).toContain("now belongs to a different, newer account than in");
    // --restore-account would remove the other account although the old one is still here: refused.
    const restore = await shinkei(
      ["recover", "--user", "alice@example.com", "--restore-account", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(restore.code).toBe(1);
    expect(restore.stderr).toContain(`${told}: --restore-account would remove that one for nothing`);
    expect((await db.sql`select * from users where id = ${other!.id}`)[0]).toEqual(other);
    // Back into her own account, world by world, as the note says.
    const byWorld = await shinkei(["recover", "--world", world!.id, "--yes", "--confirm-database", db.name], env);
    expect(byWorld).toSucceed();
    expect(await digest(db.sql, "alice.new@example.com")).toEqual(alice);
    expect((await db.sql`select id from worlds where owner_id = ${other!.id}`).length).toBe(0);
  });

  test("SIGKILL during the apply changes nothing; the next run leaves no scratch database and recovers", async () => {
    const alice = await digest(db.sql, "alice@example.com");
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const before = await snapshot(db.sql);
    // A gate in the database: the first insert into story_beats (the rolled-back trial) passes, the
    // second (the apply itself, after worlds and stories went in) waits on a lock this test holds.
    await db.sql.unsafe(`create sequence gate_seq;
      create function gate() returns trigger language plpgsql as $$ begin
        if nextval('gate_seq') > 1 then perform pg_advisory_xact_lock_shared(4242); end if; return null; end $$;
      create trigger gate before insert on story_beats for each statement execute function gate();`);
    const holder = await db.sql.reserve();
    await holder`select pg_advisory_lock(4242)`;
    const p = Bun.spawn(
      [binaryPath, "recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
      { env: { PATH: process.env.PATH!, TMPDIR: tmpdir(), ...env }, stdout: "ignore", stderr: "ignore" },
    );
    const waiting = async () =>
      (
        await db.sql`select pid from pg_stat_activity where datname = ${db.name} and wait_event_type = 'Lock'
          and wait_event = 'advisory'`
      ).map((r) => r.pid);
    for (let i = 0; i < 400 && (await waiting()).length === 0; i++) await Bun.sleep(50);
    const [pid] = await waiting();
    expect(pid).toBeDefined();
    expect(
      await db.sql`select 1 from pg_stat_activity where pid = ${pid!} and state = 'active' and backend_xid is not null`,
    ).toHaveLength(1); // mid-transaction, rows written
    p.kill("SIGKILL");
    await p.exited;
    expect((await scratchDatabases()).length).toBe(1);
    await holder`select pg_advisory_unlock(4242)`;
    holder.release();
    for (let i = 0; i < 200 && (await db.sql`select 1 from pg_stat_activity where pid = ${pid!}`).length; i++)
      await Bun.sleep(50);
    await db.sql.unsafe("drop trigger gate on story_beats; drop function gate(); drop sequence gate_seq");
    expect(await snapshot(db.sql)).toEqual(before);

    // `_` matches any character in LIKE: a database that only looks like ours must survive the clean-up.
    const lookalike = `shinkei1recover2keep_${crypto.randomUUID().slice(0, 6)}`;
    const a = postgres(serverUrl, { max: 1, onnotice: () => {} });
    await a`create database ${a(lookalike)}`;
    try {
      const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
      expect(r).toSucceed();
      expect(await scratchDatabases()).toEqual([]);
      expect(await digest(db.sql, "alice@example.com")).toEqual(alice);
      expect(await a`select 1 from pg_database where datname = ${lookalike}`).toHaveLength(1);
    } finally {
      await a`drop database if exists ${a(lookalike)}`;
      await a.end();
    }
  });

  test("the maintenance lock lost during the apply: rolled back before its commit, nothing applied", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const before = await snapshot(db.sql);
    // The same gate as above: the apply itself (not the trial) waits inside its transaction.
    await db.sql.unsafe(`create sequence gate_seq;
      create function gate() returns trigger language plpgsql as $$ begin
        if nextval('gate_seq') > 1 then perform pg_advisory_xact_lock_shared(4242); end if; return null; end $$;
      create trigger gate before insert on story_beats for each statement execute function gate();`);
    const holder = await db.sql.reserve();
    await holder`select pg_advisory_lock(4242)`;
    const running = shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    try {
      await until(
        "the apply to wait at the gate",
        async () =>
          (
            await db.sql`select 1 from pg_stat_activity where datname = ${db.name} and wait_event_type = 'Lock'
              and wait_event = 'advisory'`
          ).length > 0,
      );
      // The maintenance lock's connection ends (on the live database; the scratch lock lives on postgres).
      const lockHolder = db.sql`select pid from pg_stat_activity
        where datname = ${db.name} and application_name like 'shinkei recover%'`;
      expect(await lockHolder).toHaveLength(1);
      await db.sql`select pg_terminate_backend(pid) from pg_stat_activity
        where datname = ${db.name} and application_name like 'shinkei recover%'`;
      await until(
        "the lock's connection to end",
        async () =>
          (
            await db.sql`select 1 from pg_stat_activity
              where datname = ${db.name} and application_name like 'shinkei recover%'`
          ).length === 0,
      );
    } finally {
      await holder`select pg_advisory_unlock(4242)`;
      holder.release();
    }
    const r = await running;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the recover lock was lost");
    await db.sql.unsafe("drop trigger gate on story_beats; drop function gate(); drop sequence gate_seq");
    expect(await snapshot(db.sql)).toEqual(before);
    expect(await db.sql`select id from recoveries`).toHaveLength(0);
  });

  test("a child table added later (as a migration would) is followed with no code change", async () => {
    await db.sql.unsafe(`create table beat_notes (
      id uuid primary key default gen_random_uuid(),
      beat_id uuid not null references story_beats (id),
      note text not null)`);
    await db.sql`insert into beat_notes (beat_id, note) select id, 'note on ' || content from story_beats`;
    const notes = async () => db.sql`select n.* from beat_notes n join story_beats b on b.id = n.beat_id join stories s
        on s.id = b.story_id
      join worlds w on w.id = s.world_id join users u on u.id = w.owner_id where u.email = 'alice@example.com'
        order by n.id`;
    const aliceNotes = await notes();
    expect(aliceNotes).toHaveLength(12);
    await takeBackup(env);
    // Notes alone (world 2, story 1), and notes with their beats, stories and world (world 1).
    await db.sql`delete from beat_notes where beat_id in (select b.id from story_beats b join stories s
      on s.id = b.story_id join worlds w on w.id = s.world_id
      where w.name = 'alice@example.com world 1' or (w.name = 'alice@example.com world 2' and s.title = 'story 1'))`;
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");

    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    expect(r.stdout).toContain("story_beats -> beat_notes  (beat_notes.beat_id references story_beats.id)");
    expect(r.stdout).toMatch(/^beat_notes\s+9\s+0\s+0\s+3$/m);
    expect(await notes()).toEqual(aliceNotes);
  });

  test("--world brings back that one world; an encrypted backup found only off-site is a source", async () => {
    const s3 = await TestS3.start();
    try {
      const offsite = { ...env, ...s3.env(), ...(await ageKeys()) };
      const [w1] = await db.sql`select id from worlds where name = 'alice@example.com world 1'`;
      const alice = await digest(db.sql, "alice@example.com");
      const file = await takeBackup(offsite);
      expect(file).toEndWith(".age");
      for (const name of await readdir(env.BACKUP_DIR!)) await Bun.file(join(env.BACKUP_DIR!, name)).delete();
      for (const w of ["alice@example.com world 1", "alice@example.com world 2"])
        await deleteWorld(db.sql, "alice@example.com", w);

      const r = await shinkei(["recover", "--world", w1!.id, "--yes", "--confirm-database", db.name], offsite);
      expect(r.stderr).toBe("");
      expect(r).toSucceed();
      expect(r.stdout).toContain(`scope      world ${w1!.id} (owner alice@example.com)`);
      expect(r.stdout).toContain("restored       worlds 1, stories 2, story_beats 6");
      expect(
        (
          await db.sql`select w.name from worlds w join users u on u.id = w.owner_id
            where u.email = 'alice@example.com'`
        ).map((x) => x.name),
      ).toEqual(["alice@example.com world 1"]);
      const both = await shinkei(
        ["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
        offsite,
      );
      expect(both).toSucceed();
      expect(await digest(db.sql, "alice@example.com")).toEqual(alice);
    } finally {
      await s3.stop();
    }
  });

  test("a second recover on one server: LOCKED (75) without --wait; with --wait it queues, then runs", async () => {
    await backupOfTheStart();
    const lock = postgres(serverUrl, { max: 1, onnotice: () => {} });
    try {
      // Another recover holding the server's scratch lock (a test stands in for it: it never lets go by itself).
      const queued = await withAdvisoryLock(
        lock,
        `scratch:${RECOVER_PREFIX}`,
        async () => {
          const refused = await shinkei(["recover", "--user", "alice@example.com", "--dry-run"], env);
          expect(refused.code).toBe(75);
          expect(refused.stderr).toContain("recover");
          const p = Bun.spawn([binaryPath, "recover", "--wait", "--user", "alice@example.com", "--dry-run", "--json"], {
            env: { PATH: process.env.PATH!, TMPDIR: tmpdir(), ...env },
            stdout: "pipe",
            stderr: "pipe",
          });
          await until(
            "the second recover to wait on the lock",
            async () =>
              (
                await lock`select 1 from pg_stat_activity
                  where application_name like 'shinkei recover%' and wait_event = 'advisory'`
              ).length > 0,
          );
          expect(await scratchDatabases()).toEqual([]);
          return p;
        },
        { wait: true, what: "a test" },
      );
      expect(await queued.exited).toBe(0);
      expect(JSON.parse(await new Response(queued.stdout).text()).tables.length).toBeGreaterThan(0);
      expect(await scratchDatabases()).toEqual([]);
    } finally {
      await lock.end();
    }
  });

  test("SIGTERM at any moment of the load drops the scratch database and changes nothing", async () => {
    await slowToLoad(await backupOfTheStart(), 10);
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const before = await snapshot(db.sql);
    // From the moment the scratch database exists: connecting, BEGIN, the statements before the sleep.
    for (const delay of [0, 10, 20, 30, 40, 60, 100]) {
      const p = Bun.spawn(
        [binaryPath, "recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
        { env, stdout: "ignore", stderr: "ignore" },
      );
      for (let i = 0; i < 400 && (await scratchDatabases()).length === 0; i++) await Bun.sleep(10);
      expect((await scratchDatabases()).length).toBe(1);
      await Bun.sleep(delay);
      p.kill("SIGTERM");
      // A recover stuck after its scratch is dropped ends itself 2 s after the drop (cli/signals.ts); on a
      // loaded machine the drop takes seconds of its own. Only a hang runs into this bound: no time is lost to it.
      const exited = await Promise.race([p.exited, Bun.sleep(30_000).then(() => "still running")]);
      if (exited === "still running") p.kill("SIGKILL");
      expect({ delay, exited }).toEqual({ delay, exited: 130 });
      expect(await scratchDatabases()).toEqual([]);
      expect(await snapshot(db.sql)).toEqual(before);
    }
  }, 240_000); // seven runs, each of which may take the 2 s a stuck unwind is given, and a slow drop
});
