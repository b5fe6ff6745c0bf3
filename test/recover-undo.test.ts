import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { tmpdir } from "node:os";
import postgres from "postgres";
import { freshDatabase, snapshot, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { binaryPath, shinkei, takeBackup } from "./support/cli.ts";
import { copyBackup } from "./support/backup.ts";
import { tempDir } from "./support/fixtures.ts";
import { Terminal } from "./support/pty.ts";
import { until } from "./support/wait.ts";
import {
  ageKeys,
  aliceBeat,
  busyWorlds,
  deleteWorld,
  digest,
  keepWriting,
  recordOf,
  startingState,
} from "./support/recover.ts";

/*
 * Undoing a recovery (recover --undo), apart from recover.test.ts so the two run side by side
 * (bun test --parallel): together they were the suite's longest file.
 */

// Real databases, backups and processes: 5 s is too tight on a busy 2-core machine.
setDefaultTimeout(90_000);

let db: TestDatabase;
let env: Record<string, string>;
/*
 * A server of this file's own: a recovery's load into its scratch database refuses to commit when
 * any database's row in pg_database changed meanwhile, and test files running beside this one
 * create and drop databases on the shared server all the time.
 */
let server: TestCluster;
let serverUrl: string;
/** One connection to the server's postgres database for the whole file: copying and dropping databases. */
let admin: postgres.Sql;
/*
 * The database every test starts from (migrated; alice's and bob's rows), made once: each test gets
 * a copy of it (CREATE DATABASE ... TEMPLATE: the same rows, ids and all), and the tests that start
 * with a backup of that state get a copy of one backup taken of it once, not a backup of their own.
 */
let template: string;
let startBackup: string;

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

describe("undo a recovery", () => {
  test("recover and undo while bob writes: bob's rows untouched, alice as before each; 2nd undo refused", async () => {
    const original = await digest(db.sql, "alice@example.com");
    const edited = await aliceBeat(db.sql, "story 1", 1);
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 2");
    await db.sql`update story_beats set content = 'edited after the backup' where id = ${edited!.id}`;
    const lost = await digest(db.sql, "alice@example.com");
    const bobBefore = await digest(db.sql, "bob@example.com");

    let stop = keepWriting(db.sql, "bob@example.com");
    const r = await shinkei(
      ["recover", "--user", "alice@example.com", "--revert-changed", "--yes", "--confirm-database", db.name],
      env,
    );
    let made = await stop();
    expect(r.stderr).toBe("");
    expect(r).toSucceed();
    expect(made).toBeGreaterThan(0);
    expect(await busyWorlds(db.sql)).toBe(made);
    expect(await digest(db.sql, "alice@example.com")).toEqual(original);
    expect(r.stdout).toContain("reverted       story_beats 1");
    const record = recordOf(r.stdout);

    const preview = await shinkei(["recover", "--undo", record, "--dry-run"], env);
    expect(preview).toSucceed();
    expect(preview.stdout).toMatch(/^story_beats\s+6\s+1\s+0$/m);
    expect(preview.stdout).toContain("dry run: nothing was changed");
    expect(await digest(db.sql, "alice@example.com")).toEqual(original);

    stop = keepWriting(db.sql, "bob@example.com");
    const before = made;
    const u = await shinkei(["recover", "--undo", record, "--yes", "--confirm-database", db.name], env);
    made = before + (await stop());
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    expect(u.stdout).toContain("removed        worlds 1, stories 2, story_beats 6");
    expect(u.stdout).toContain("put back       story_beats 1");
    expect(await digest(db.sql, "alice@example.com")).toEqual(lost);
    expect(await busyWorlds(db.sql)).toBe(made);
    await db.sql`delete from worlds where name like 'busy %'`;
    expect(await digest(db.sql, "bob@example.com")).toEqual(bobBefore);

    // By its id, as --history lists it: refused, it was undone.
    const id = JSON.parse(await readFile(record, "utf8")).id as string;
    expect((await shinkei(["recover", "--history"], env)).stdout).toMatch(
      new RegExp(`^${id.slice(0, 8)} .* undone \\S+Z$`, "m"),
    );
    const snap = await snapshot(db.sql);
    const again = await shinkei(["recover", "--undo", id.slice(0, 8), "--yes", "--confirm-database", db.name], env);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`recovery ${id} was undone already`);
    const mixed = await shinkei(
      ["recover", "--undo", id, "--user", "alice@example.com", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(mixed.code).toBe(2);
    expect(mixed.stderr).toContain("--undo takes its scope and source from the record: drop --user");
    expect(await snapshot(db.sql)).toEqual(snap);
  });

  test("the undo asks for the same confirmation in a terminal; a wrong one changes nothing", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    const before = await snapshot(db.sql);
    const t = await Terminal.start(["recover", "--undo", recordOf(r.stdout)], { ...env, NO_COLOR: "1" });
    try {
      const screen = await t.waitFor("Type alice@example.com to undo recovery");
      expect(screen).toMatch(/worlds\s+1\s+0\s+0/);
      await t.type("alice@example.org");
      await t.enter();
      expect(await t.exitCode()).toBe(1);
      expect(await t.screen()).toContain("aborted, nothing was changed");
    } finally {
      await t.close();
    }
    expect(await snapshot(db.sql)).toEqual(before);
    expect((await db.sql`select undone_at from recoveries`)[0]!.undone_at).toBeNull();
    const unattended = await shinkei(["recover", "--undo", recordOf(r.stdout)], env);
    expect(unattended.code).toBe(1);
    expect(unattended.stderr).toContain(`pass --yes --confirm-database ${db.name}`);
  });

  test("undo after the recovered rows were edited stops, naming each such row; nothing is undone", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    const edited = await aliceBeat(db.sql, "story 1", 1);
    await db.sql`update story_beats set content = 'written after the recovery' where id = ${edited!.id}`;
    const gone = await aliceBeat(db.sql, "story 2", 0);
    await db.sql`delete from story_beats where id = ${gone!.id}`;
    const [added] =
      await db.sql`insert into story_beats (story_id, position, content) values (${edited!.story_id}, 9, 'new')
        returning id`;
    const before = await snapshot(db.sql);

    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u.code).toBe(1);
    expect(u.stderr).toContain("3 rows changed since the recovery, nothing was undone");
    expect(u.stderr).toContain(`story_beats (id)=(${edited!.id}) was changed since the recovery`);
    expect(u.stderr).toContain(`story_beats (id)=(${gone!.id}) was deleted since the recovery`);
    expect(u.stderr).toContain(`story_beats (id)=(${added!.id}) was written since, under a recovered stories row`);
    expect(await snapshot(db.sql)).toEqual(before);
    expect((await db.sql`select undone_at from recoveries`)[0]!.undone_at).toBeNull();
  });

  test("the maintenance lock lost during the undo: rolled back before its commit, nothing undone", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    const before = await snapshot(db.sql);
    // A gate: the undo's first delete (with --yes there is no trial) waits inside its transaction.
    await db.sql.unsafe(`create function gate() returns trigger language plpgsql as $$ begin
        perform pg_advisory_xact_lock_shared(4242); return null; end $$;
      create trigger gate before delete on story_beats for each statement execute function gate();`);
    const holder = await db.sql.reserve();
    await holder`select pg_advisory_lock(4242)`;
    const lockHolder = () =>
      db.sql`select pid from pg_stat_activity where datname = ${db.name} and application_name like 'shinkei recover%'`;
    const undoing = shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    try {
      await until(
        "the undo to wait at the gate",
        async () =>
          (
            await db.sql`select 1 from pg_stat_activity where datname = ${db.name} and wait_event_type = 'Lock'
              and wait_event = 'advisory'`
          ).length > 0,
      );
      expect(await lockHolder()).toHaveLength(1);
      await db.sql`select pg_terminate_backend(pid) from (${lockHolder()}) h`;
      await until("the lock's connection to end", async () => (await lockHolder()).length === 0);
    } finally {
      await holder`select pg_advisory_unlock(4242)`;
      holder.release();
    }
    const u = await undoing;
    expect(u.code).toBe(1);
    expect(u.stderr).toContain("the recover lock was lost");
    await db.sql.unsafe("drop trigger gate on story_beats; drop function gate()");
    expect(await snapshot(db.sql)).toEqual(before);
    expect((await db.sql`select undone_at from recoveries`)[0]!.undone_at).toBeNull();
  });

  test("rows written since that refer to recovered ones through any foreign key stop the undo, named", async () => {
    // A reference recover does not follow (a story's to another story), and the recovered account's
    // sessions and events (never restored): deleting the recovered rows would set bob's reference to
    // null and delete alice's new session and event by cascade.
    await db.sql`alter table stories add column forked_from uuid references stories (id) on delete set null`;
    await backupOfTheStart();
    for (const w of [1, 2]) await deleteWorld(db.sql, "alice@example.com", `alice@example.com world ${w}`);
    await db.sql`delete from users where email = 'alice@example.com'`;
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    const [alice] = await db.sql`select id from users where email = 'alice@example.com'`;
    const [event] = await db.sql`insert into account_events (user_id, kind, ip)
      values (${alice!.id}, 'password_reset', '10.0.0.1') returning id`;
    const [session] = await db.sql`insert into sessions (token_hash, user_id, expires_at)
      values (${Buffer.from("signed in after the recovery")}, ${alice!.id}, now() + interval '1 day') returning id`;
    const story = async (world: string) =>
      (
        await db.sql`select s.id from stories s join worlds w on w.id = s.world_id
        where w.name = ${world} and s.title = 'story 1'`
      )[0]!.id as string;
    const [hers, bobs] = [await story("alice@example.com world 1"), await story("bob@example.com world 1")];
    await db.sql`update stories set forked_from = ${hers} where id = ${bobs}`;
    const before = {
      rows: await snapshot(db.sql),
      events: await db.sql`select * from account_events order by id`,
    };

    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u.code).toBe(1);
    expect(u.stderr).toContain("3 rows changed since the recovery, nothing was undone");
    for (const row of [
      `account_events (id)=(${event!.id}) was written since, under a recovered users row`,
      `sessions (id)=(${session!.id}) was written since, under a recovered users row`,
      `stories (id)=(${bobs}) was written since, under a recovered stories row (foreign key stories_forked_from_fkey)`,
    ])
      expect(u.stderr).toContain(row);
    expect({ rows: await snapshot(db.sql), events: await db.sql`select * from account_events order by id` }).toEqual(
      before,
    );
    expect((await db.sql`select undone_at from recoveries`)[0]!.undone_at).toBeNull();
  });

  test("a row the recovery moved back under a parent it brought back (--revert-changed) is its to undo", async () => {
    await backupOfTheStart();
    const worlds = await db.sql`select w.id from worlds w join users u on u.id = w.owner_id
      where u.email = 'alice@example.com' order by w.name`;
    const [moved] = await db.sql`select id from stories where world_id = ${worlds[0]!.id} and title = 'story 1'`;
    await db.sql`update stories set world_id = ${worlds[1]!.id} where id = ${moved!.id}`;
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await snapshot(db.sql);
    const r = await shinkei(
      ["recover", "--user", "alice@example.com", "--revert-changed", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(r).toSucceed();
    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u).toSucceed();
    expect(await snapshot(db.sql)).toEqual(lost);
  });

  test("a column a migration added since does not stop the undo; one it dropped does, named", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await snapshot(db.sql);
    const recover = () =>
      shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    const undo = (record: string) =>
      shinkei(["recover", "--undo", record, "--yes", "--confirm-database", db.name], env);
    const r = await recover();
    expect(r).toSucceed();
    // The digests are of the columns the rows had: before, every recovered row read as changed.
    await db.sql`alter table story_beats add column mood text not null default 'calm'`;
    const u = await undo(recordOf(r.stdout));
    expect(u).toSucceed();
    await db.sql`alter table story_beats drop column mood`;
    expect(await snapshot(db.sql)).toEqual(lost);

    const again = await recover();
    expect(again).toSucceed();
    const recovered = await snapshot(db.sql);
    await db.sql`alter table stories drop column summary`;
    const refused = await undo(recordOf(again.stdout));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("table stories has lost column summary since the recovery (a migration)");
    expect(refused.stderr).not.toContain("story_beats");
    const { stories, ...rest } = recovered;
    const { stories: _, ...restNow } = await snapshot(db.sql);
    expect(restNow).toEqual(rest);
  });

  test("VACUUM FULL and CLUSTER since the recovery keep each row's version: the undo goes ahead", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await snapshot(db.sql);
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    await db.sql`vacuum full worlds`;
    await db.sql`cluster story_beats using story_beats_pkey`;
    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    expect(await snapshot(db.sql)).toEqual(lost);
  });

  test("a migration that rewrites a table (a column with a volatile default) does not stop the undo", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await snapshot(db.sql);
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    // A volatile default fills every row: PostgreSQL rewrites the table, and each row gets a new xmin
    // (the ALTER's), with the same values in every column the recovery wrote.
    await db.sql`alter table story_beats add column token uuid not null default gen_random_uuid()`;
    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    await db.sql`alter table story_beats drop column token`;
    expect(await snapshot(db.sql)).toEqual(lost);
  });

  test("a backup taken after the recovery and restored undoes: its rows are new versions, not new writes", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await snapshot(db.sql);
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    expect(await takeBackup(env)).toBeTruthy();
    const restored = await shinkei(
      ["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(restored).toSucceed();
    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    expect(await snapshot(db.sql)).toEqual(lost);
  });

  test("a password changed after a --revert-changed recovery does not stop its undo, and stays", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    await db.sql`update users set name = 'Alice B' where email = 'alice@example.com'`;
    const lost = await snapshot(db.sql);
    const r = await shinkei(
      ["recover", "--user", "alice@example.com", "--revert-changed", "--yes", "--confirm-database", db.name],
      env,
    );
    expect(r).toSucceed();
    expect(r.stdout).toContain("reverted       users 1");
    // The recovery never writes how she signs in: a new password since (or a rehash at login) is hers.
    await db.sql`update users set password_hash = 'changed since the recovery' where email = 'alice@example.com'`;
    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    const [alice] = await db.sql`select name, password_hash from users where email = 'alice@example.com'`;
    expect(alice).toEqual({ name: "Alice B", password_hash: "changed since the recovery" });
    expect((await snapshot(db.sql)).worlds).toEqual(lost.worlds);
  });

  test("rows a later recovery brought back again are its to undo first: the earlier undo stops, named", async () => {
    await backupOfTheStart();
    const recover = () =>
      shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
    const undo = (record: string) =>
      shinkei(["recover", "--undo", record, "--yes", "--confirm-database", db.name], env);
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await snapshot(db.sql);
    const first = await recover();
    expect(first).toSucceed();
    // Lost again, and brought back again: the same rows, ids and values, written by another recovery.
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const second = await recover();
    expect(second).toSucceed();
    const recovered = await snapshot(db.sql);

    const early = await undo(recordOf(first.stdout));
    expect(early.code).toBe(1);
    expect(early.stderr).toMatch(/worlds \(id\)=\(\S+\) was written again since the recovery, with the same values/);
    expect(early.stderr).toContain(
      "and a recovery applied after it is not undone: it may have brought the row back; undo that one first",
    );
    expect(await snapshot(db.sql)).toEqual(recovered);
    expect(await undo(recordOf(second.stdout))).toSucceed();
    expect(await snapshot(db.sql)).toEqual(lost);
  });

  test("a tampered, unsigned, foreign or uncommitted record is refused, changing nothing; signed undoes", async () => {
    const keyed = {
      ...env,
      ...(await ageKeys()),
      BACKUP_MANIFEST_KEY: "k".repeat(32),
    };
    await takeBackup(keyed);
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await digest(db.sql, "alice@example.com");
    const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], keyed);
    expect(r).toSucceed();
    expect(r.stdout).toMatch(
      /^safety copy {4}\S+\.undo\.json\.age \(the rows it changed; encrypted; its record signed\)$/m,
    );
    const path = recordOf(r.stdout);
    const text = await readFile(path, "utf8");
    const record = JSON.parse(text);
    const undoPath = join(env.BACKUP_DIR!, record.undo.file);
    const undoBytes = await readFile(undoPath);
    expect(undoBytes.subarray(0, 21).toString()).toBe("age-encryption.org/v1");
    expect(undoBytes.includes(Buffer.from(record.id))).toBe(false);
    const recovered = await snapshot(db.sql);
    const refused = async (e: Record<string, string>, message: string | RegExp) => {
      const u = await shinkei(
        ["recover", "--undo", path, "--yes", "--confirm-database", new URL(e.DATABASE_URL!).pathname.slice(1)],
        e,
      );
      expect(u.code).toBe(1);
      expect(u.stderr).toMatch(message);
      expect(await snapshot(db.sql)).toEqual(recovered);
    };

    // The record edited: its signature no longer matches (with the key), or it has none.
    await Bun.write(path, text.replace('"restored": 6', '"restored": 7'));
    await refused(keyed, "is not signed with this host's BACKUP_MANIFEST_KEY");
    await Bun.write(path, JSON.stringify({ ...record, signature: undefined }));
    await refused(keyed, "is unsigned, and BACKUP_MANIFEST_KEY is set");
    await Bun.write(path, text);
    // The safety copy swapped for another file.
    await Bun.write(undoPath, Buffer.concat([undoBytes, Buffer.from("x")]));
    await refused(keyed, "does not match its record's SHA-256");
    await Bun.write(undoPath, undoBytes);
    // A record of another database.
    const other = await freshDatabase("recover_other", serverUrl, template);
    try {
      await refused(
        { ...keyed, DATABASE_URL: other.url },
        `records a recovery of database ${db.name}, not of ${other.name}`,
      );
    } finally {
      await other.drop();
    }
    // A record this database never committed (as one whose transaction was killed).
    const [row] = await db.sql`delete from recoveries returning *`;
    await refused(keyed, `recovery ${record.id} is not recorded in this database`);
    await db.sql`insert into recoveries ${db.sql(row!)}`;
    // The right key and the untouched files: it undoes.
    const u = await shinkei(["recover", "--undo", path, "--yes", "--confirm-database", db.name], keyed);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    expect(await digest(db.sql, "alice@example.com")).toEqual(lost);
  });

  test("--restore-account undone: the recovered account goes, the new one is back; --full-safety-backup", async () => {
    const [old] = await db.sql`select id from users where email = 'alice@example.com'`;
    await backupOfTheStart();
    for (const w of ["alice@example.com world 1", "alice@example.com world 2"])
      await deleteWorld(db.sql, "alice@example.com", w);
    await db.sql`delete from users where id = ${old!.id}`;
    const [fresh] =
      await db.sql`insert into users (email, name, password_hash) values ('Alice@Example.com', 'new alice', 'h')
        returning *`;
    const before = await snapshot(db.sql);

    const r = await shinkei(
      [
        "recover",
        "--user",
        "alice@example.com",
        "--restore-account",
        "--full-safety-backup",
        "--yes",
        "--confirm-database",
        db.name,
      ],
      env,
    );
    expect(r).toSucceed();
    const safety = /^safety backup\s+(\S+) \(verified\)$/m.exec(r.stdout)![1]!;
    expect(JSON.parse(await readFile(`${safety}.manifest.json`, "utf8")).reason).toBe("pre-recover");
    expect(JSON.parse(await readFile(recordOf(r.stdout), "utf8")).safetyBackup).toBe(safety.split("/").at(-1));

    const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    expect(u.stdout).toContain("removed        users 1, worlds 2, stories 4, story_beats 12");
    expect(u.stdout).toContain("brought back   users 1");
    expect(await snapshot(db.sql)).toEqual(before);
    expect((await db.sql`select * from users where id = ${fresh!.id}`)[0]).toEqual(fresh);
  });

  test("SIGKILL during the undo, or after the safety copy, before the recovery commits: all or nothing", async () => {
    const alice = await digest(db.sql, "alice@example.com");
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 1");
    const lost = await snapshot(db.sql);
    const holder = await db.sql.reserve();
    const waiting = async () =>
      (
        await db.sql`select pid from pg_stat_activity where datname = ${db.name} and wait_event_type = 'Lock'
          and wait_event = 'advisory'`
      ).map((r) => r.pid);
    /** Run shinkei until it waits at the gate inside its transaction, then SIGKILL it and let its backend go. */
    const killAtGate = async (args: string[]) => {
      await holder`select pg_advisory_lock(4242)`;
      const p = Bun.spawn([binaryPath, ...args], {
        env: { PATH: process.env.PATH!, TMPDIR: tmpdir(), ...env },
        stdout: "ignore",
        stderr: "ignore",
      });
      for (let i = 0; i < 600 && (await waiting()).length === 0; i++) await Bun.sleep(50);
      const [pid] = await waiting();
      expect(pid).toBeDefined();
      expect(await db.sql`select 1 from pg_stat_activity where pid = ${pid!} and backend_xid is not null`).toHaveLength(
        1,
      ); // rows written, not committed
      p.kill("SIGKILL");
      await p.exited;
      await holder`select pg_advisory_unlock(4242)`;
      for (let i = 0; i < 200 && (await db.sql`select 1 from pg_stat_activity where pid = ${pid!}`).length; i++)
        await Bun.sleep(50);
    };
    const gate = (table: string, op: string, pass: number) =>
      db.sql.unsafe(`create sequence gate_seq;
      create function gate() returns trigger language plpgsql as $$ begin
        if nextval('gate_seq') > ${pass} then perform pg_advisory_xact_lock_shared(4242); end if; return null; end $$;
      create trigger gate before ${op} on ${table} for each statement execute function gate();`);
    const ungate = (table: string) =>
      db.sql.unsafe(`drop trigger gate on ${table}; drop function gate(); drop sequence gate_seq`);
    try {
      // The recovery killed after its record and safety copy were written, at the insert that would commit with them.
      await gate("recoveries", "insert", 0);
      await killAtGate(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name]);
      await ungate("recoveries");
      expect(await snapshot(db.sql)).toEqual(lost);
      const h = JSON.parse((await shinkei(["recover", "--history", "--json"], env)).stdout);
      expect(h.map((x: { state: string }) => x.state)).toEqual(["not recorded here"]);
      const orphan = await shinkei(["recover", "--undo", h[0].path, "--yes", "--confirm-database", db.name], env);
      expect(orphan.code).toBe(1);
      expect(orphan.stderr).toContain("is not recorded in this database");

      const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
      expect(r).toSucceed();
      const recovered = await snapshot(db.sql);
      // The undo killed mid-way: with --yes there is no trial, and its delete of stories (the beats
      // went already) waits.
      await gate("stories", "delete", 0);
      await killAtGate(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name]);
      await ungate("stories");
      expect(await snapshot(db.sql)).toEqual(recovered);
      expect(await digest(db.sql, "alice@example.com")).toEqual(alice);
      const u = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
      expect(u).toSucceed();
      expect(await snapshot(db.sql)).toEqual(lost);
    } finally {
      holder.release();
    }
  });
});
