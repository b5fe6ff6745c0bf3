import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, test } from "bun:test";
import { readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import postgres from "postgres";
import { freshDatabase, snapshot, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { shinkei, takeBackup } from "./support/cli.ts";
import { tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { writeIdentity } from "../src/storage/crypt.ts";
import { loadConfig } from "../src/config/index.ts";
import { scheduledRun } from "../src/service/schedule.ts";
import { writeRecovery, type RecoveredRecord } from "../src/recover/record.ts";
import { mirrorRecovery, recoveryStore } from "../src/recover/stores.ts";
import { type Sql } from "../src/pg/db.ts";

/*
 * Recovery records kept off-site and pruned: real PostgreSQL, the real binary, a real S3-protocol
 * server. Recoveries run with --wait: queued behind any other recover on the server, never refused.
 */

const DAY = 86_400_000;
let db: TestDatabase;
let s3: TestS3;
let dir: string;
let prefix: string;
let env: Record<string, string>;
/*
 * An X25519 key pair, not a passphrase: a passphrase costs a second of scrypt per file sealed or
 * opened, and the records, safety copies and backups here are sealed and opened many times.
 */
let age: { BACKUP_AGE_RECIPIENTS: string; BACKUP_AGE_IDENTITY: string };

/*
 * A server of this file's own: the load into the scratch database refuses to commit when any
 * database's row in pg_database changed meanwhile, and test files running beside this one (bun test
 * --parallel) create and drop databases on the shared server all the time.
 */
let server: TestCluster;
/** One connection to the server's postgres database for the whole file: copying and dropping databases. */
let admin: postgres.Sql;
/*
 * The database every test starts from (migrated; alice's and bob's rows), made once: each test gets
 * a copy of it (CREATE DATABASE ... TEMPLATE: the same rows, ids and all).
 */
let template: string;

beforeAll(async () => {
  server = await startCluster();
  s3 = await TestS3.start();
  const key = join(await tempDir("records-key"), "age.key");
  age = { BACKUP_AGE_RECIPIENTS: await writeIdentity(key), BACKUP_AGE_IDENTITY: key };
  admin = postgres(server.url(), { max: 1, onnotice: () => {} });
  const start = await freshDatabase("records_start", server.url());
  await migrate(start.sql);
  await writer(start.sql, "alice@example.com");
  await writer(start.sql, "bob@example.com");
  await start.sql.end();
  template = start.name;
});
afterAll(async () => {
  await s3.stop();
  await admin.end();
  await server.stop();
});
beforeEach(async () => {
  db = await freshDatabase("records", server.url(), template);
  dir = await tempDir("records");
  prefix = `run-${crypto.randomUUID().slice(0, 6)}/`;
  env = {
    DATABASE_URL: db.url,
    BACKUP_DIR: dir,
    ...s3.env(prefix),
    ...age,
    BACKUP_MANIFEST_KEY: "r".repeat(32),
  };
});
afterEach(() => db.drop());

/** A user with two worlds of two stories of two beats each. */
async function writer(sql: Sql, email: string) {
  const [u] = await sql`insert into users (email, name, password_hash)
      values (${email}, ${email.split("@")[0]!}, 'hash') returning id`;
  for (let w = 1; w <= 2; w++) {
    const [world] =
      await sql`insert into worlds (owner_id, name) values (${u!.id}, ${`${email} world ${w}`}) returning id`;
    for (let s = 1; s <= 2; s++) {
      const [story] =
        await sql`insert into stories (world_id, title) values (${world!.id}, ${`story ${s}`}) returning id`;
      await sql`insert into story_beats (story_id, position, content)
        select ${story!.id}, i, 'beat ' || i from generate_series(0, 1) i`;
    }
  }
}

async function deleteWorld(sql: Sql, name: string) {
  await sql.begin(async (tx) => {
    const [w] = await tx`select id from worlds where name = ${name}`;
    await tx`delete from story_beats where story_id in (select id from stories where world_id = ${w!.id})`;
    await tx`delete from stories where world_id = ${w!.id}`;
    await tx`delete from worlds where id = ${w!.id}`;
  });
}

const recordOf = (stdout: string) =>
  /^undo with\s+shinkei recover --undo (\S+) --yes --confirm-database \S+$/m.exec(stdout)![1]!;

/** Alice's world 1 deleted after a backup, then recovered: the record's path. */
async function recoverAlice(e = env): Promise<{ path: string; stdout: string; stderr: string }> {
  await takeBackup(e);
  await deleteWorld(db.sql, "alice@example.com world 1");
  const r = await shinkei(
    ["recover", "--user", "alice@example.com", "--wait", "--yes", "--confirm-database", db.name],
    e,
  );
  expect(r).toSucceed();
  expect(r.stdout).toContain("restored       worlds 1, stories 2, story_beats 4");
  return { path: recordOf(r.stdout), stdout: r.stdout, stderr: r.stderr };
}

async function keys(under: string): Promise<string[]> {
  const r = await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: under }));
  return (r.Contents ?? []).map((o) => o.Key!.slice(under.length)).sort();
}

const object = async (Key: string) =>
  (await s3.client().send(new GetObjectCommand({ Bucket: s3.bucket, Key }))).Body!.transformToString();

const aliceWorlds = async () =>
  (
    await db.sql`select w.name from worlds w join users u on u.id = w.owner_id
      where u.email = 'alice@example.com' order by 1`
  ).map((r) => r.name as string);

const undoFolders = async () => (await readdir(tmpdir())).filter((n) => n.startsWith("shinkei-undo-"));

describe("recovery records off-site", () => {
  test("record and safety copy go off-site with the recover; --undo reads them there after a lost disk", async () => {
    const { path, stdout } = await recoverAlice();
    const folder = `${prefix}recoveries/`;
    expect(stdout).toContain(`off-site       copied to s3://${s3.bucket}/${folder}`);
    const record = JSON.parse(await Bun.file(path).text()) as RecoveredRecord;
    expect(record.undo!.file).toEndWith(".undo.json.age");
    expect(await keys(folder)).toEqual([basename(path), record.undo!.file].sort());
    // The local record notes the checked copy; the off-site one is the same record, its signature untouched.
    expect(record.offsite!.s3).toMatchObject({ location: `s3://${s3.bucket}/${folder}`, verified: "etag" });
    const remoteText = await object(folder + basename(path));
    expect(JSON.parse(remoteText)).toEqual(record);
    // Backups stay where they were: the records have a folder of their own.
    expect((await keys(prefix)).filter((k) => k.startsWith("shinkei_recovery_"))).toEqual([]);

    const recovered = await snapshot(db.sql);
    await rm(dir, { recursive: true }); // the machine loses its disk
    const before = await undoFolders();

    // An off-site record edited there is refused exactly as a local one would be, changing nothing.
    const put = (Body: string) =>
      s3.client().send(new PutObjectCommand({ Bucket: s3.bucket, Key: folder + basename(path), Body }));
    await put(remoteText.replace('"restored": 4', '"restored": 5'));
    const tampered = await shinkei(["recover", "--undo", path, "--yes", "--confirm-database", db.name], env);
    expect(tampered.code).toBe(1);
    expect(tampered.stderr).toContain(
      `s3://${s3.bucket}/${folder}${basename(path)} is not signed with this host's BACKUP_MANIFEST_KEY`,
    );
    expect(await snapshot(db.sql)).toEqual(recovered);
    await put(remoteText);

    // By id (as --history lists it): found off-site, previewed.
    const preview = await shinkei(["recover", "--undo", record.id!.slice(0, 8), "--dry-run"], env);
    expect(preview).toSucceed();
    expect(preview.stdout).toContain(`s3://${s3.bucket}/${folder}${basename(path)}`);
    expect(preview.stdout).toContain("dry run: nothing was changed");
    expect(await snapshot(db.sql)).toEqual(recovered);

    // By the path recover printed, which no longer exists: undone from the off-site copy.
    const u = await shinkei(["recover", "--undo", path, "--yes", "--confirm-database", db.name], env);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    expect(u.stdout).toContain("removed        worlds 1, stories 2, story_beats 4");
    expect(await aliceWorlds()).toEqual(["alice@example.com world 2"]);
    expect((await db.sql`select undone_at from recoveries where id = ${record.id!}`)[0]!.undone_at).not.toBeNull();
    // Read, not written back, and its temporary folder gone.
    expect(await Bun.file(path).exists()).toBe(false);
    expect(await undoFolders()).toEqual(before);
    const again = await shinkei(["recover", "--undo", path, "--yes", "--confirm-database", db.name], env);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain("was undone already");
    // A name that is in neither place is not found, naming both.
    const missing = await shinkei(["recover", "--undo", "0123abcd", "--dry-run"], env);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain(`no recovery record 0123abcd (neither a file nor an id in ${dir} or at s3://`);
  });

  test("S3 down during the recover: it stands and warns; the service's off-site pass copies the record", async () => {
    // Named by path: --from latest would look off-site for a newer backup, and S3 is down.
    const backup = await takeBackup(env);
    await deleteWorld(db.sql, "alice@example.com world 1");
    await s3.stop();
    let r: Awaited<ReturnType<typeof shinkei>>;
    try {
      r = await shinkei(
        ["recover", "--user", "alice@example.com", "--from", backup, "--wait", "--yes", "--confirm-database", db.name],
        env,
      );
    } finally {
      await s3.start();
    }
    expect(r).toSucceed();
    expect(r.stderr).toContain("off-site       FAILED (");
    expect(r.stderr).toContain("the backup service's next run copies it");
    expect(await aliceWorlds()).toEqual(["alice@example.com world 1", "alice@example.com world 2"]);
    const path = recordOf(r.stdout);
    expect(JSON.parse(await Bun.file(path).text()).offsite).toBeUndefined();
    expect(await keys(`${prefix}recoveries/`)).toEqual([]);

    const config = loadConfig(env);
    const logs: Record<string, unknown>[] = [];
    await scheduledRun(
      { sql: db.sql, config, log: (e) => logs.push(e), store: undefined },
      new Date(Date.UTC(2031, 0, 1, 2, 0, 0)),
    );
    const pass = logs.find((l) => l.msg === "off-site copy of recovery records")!;
    expect(pass).toMatchObject({ level: "info", copied: [basename(path)], failed: [] });
    const record = JSON.parse(await Bun.file(path).text()) as RecoveredRecord;
    expect(await keys(`${prefix}recoveries/`)).toEqual([basename(path), record.undo!.file].sort());
    expect(record.offsite!.s3).toBeDefined();
  });
});

describe("recovery record retention", () => {
  test("prune leaves another database's recovery records, here and off-site, to that one's service", async () => {
    // Another database on the server shares the folder and the bucket prefix; its service keeps records a year.
    const other = await freshDatabase("records_other", server.url(), template);
    const otherEnv = { ...env, DATABASE_URL: other.url, RECOVER_RECORD_KEEP: "365d" };
    try {
      await takeBackup(otherEnv);
      await deleteWorld(other.sql, "alice@example.com world 1");
      const r = await shinkei(
        ["recover", "--user", "alice@example.com", "--wait", "--yes", "--confirm-database", other.name],
        otherEnv,
      );
      expect(r).toSucceed();
      const made = JSON.parse(await Bun.file(recordOf(r.stdout)).text()) as RecoveredRecord;
      // One of its recoveries from 120 days ago, copied off-site: its service keeps it for 245 days more.
      const config = loadConfig(otherEnv);
      const id = crypto.randomUUID();
      const old = await writeRecovery(
        dir,
        { ...made, id, at: new Date(Date.now() - 120 * DAY).toISOString(), undo: undefined, signature: undefined },
        { undoVersion: 1, id, database: other.name, root: "users", tables: [] },
        config.backup.age,
      );
      await mirrorRecovery(recoveryStore(config)!, old.path);
      const folder = `${prefix}recoveries/`;
      const names = [basename(old.path), basename(old.undoPath)];
      expect(await keys(folder)).toEqual(expect.arrayContaining(names));

      // This database's prune, with the default RECOVER_RECORD_KEEP of 90 days.
      const p = await shinkei(["backup", "prune"], env);
      expect(p).toSucceed();
      expect(await readdir(dir)).toEqual(expect.arrayContaining(names));
      expect(await keys(folder)).toEqual(expect.arrayContaining(names));
      const left = "  2 recovery record(s) of 1 other database(s) or server(s) left to their own service's retention";
      for (const place of [dir, `s3://${s3.bucket}/${folder}`])
        expect(p.stdout).toContain(
          `${place} (recovery records)\n  no recovery records of this database on this server\n${left}\n`,
        );
    } finally {
      await other.drop();
    }
  });

  // Old: removed locally and off-site. Young, or not yet off-site: kept. --dry-run lists and deletes nothing.
  test("prune removes records older than RECOVER_RECORD_KEEP, and only those", async () => {
    const young = await recoverAlice();
    const config = loadConfig(env);
    const store = recoveryStore(config)!;
    const template = JSON.parse(await Bun.file(young.path).text()) as RecoveredRecord;
    /** A record (and safety copy) as recover writes it, for a recovery applied `days` ago. */
    const past = async (days: number) => {
      const id = crypto.randomUUID();
      const written = await writeRecovery(
        dir,
        {
          ...template,
          id,
          at: new Date(Date.now() - days * DAY).toISOString(),
          undo: undefined,
          signature: undefined,
          offsite: undefined,
        },
        { undoVersion: 1, id, database: db.name, root: "users", tables: [] },
        config.backup.age,
      );
      return { record: basename(written.path), undo: basename(written.undoPath), path: written.path };
    };
    const old = await past(120);
    await mirrorRecovery(store, old.path);
    const uncopied = await past(100); // its only copy: stays however old
    const lateButYoung = await past(89);
    await mirrorRecovery(store, lateButYoung.path);
    const orphan = await past(200); // a safety copy whose record is gone
    await rm(orphan.path);
    await Bun.write(join(dir, "shinkei_recovery_notes.txt"), "not ours by name");
    const localBefore = (await readdir(dir)).sort();
    const folder = `${prefix}recoveries/`;
    const remoteBefore = await keys(folder);
    expect(remoteBefore).toContain(old.record);

    const dry = await shinkei(["backup", "prune", "--dry-run"], env);
    expect(dry).toSucceed();
    expect(dry.stdout).toContain(`${dir} (recovery records) (dry run: nothing deleted)`);
    expect(dry.stdout).toMatch(new RegExp(`${old.record}\\s+would delete\\s+older than 90d`));
    expect(dry.stdout).toMatch(new RegExp(`${orphan.undo}\\s+would delete\\s+a safety copy without its record`));
    expect(dry.stdout).toMatch(new RegExp(`${uncopied.record}\\s+keep\\s+not yet copied off-site`));
    expect(dry.stdout).toMatch(new RegExp(`${lateButYoung.record}\\s+keep\\s+within RECOVER_RECORD_KEEP \\(90d\\)`));
    expect(dry.stdout).toMatch(new RegExp(`${basename(young.path)}\\s+keep\\s+within RECOVER_RECORD_KEEP`));
    expect(dry.stdout).toContain(`s3://${s3.bucket}/${folder} (recovery records) (dry run: nothing deleted)`);
    expect(dry.stdout.match(/would delete/g)).toHaveLength(3); // old and the orphan here, old off-site
    expect((await readdir(dir)).sort()).toEqual(localBefore);
    expect(await keys(folder)).toEqual(remoteBefore);

    // With 0 nothing is ever removed.
    const forever = await shinkei(["backup", "prune", "--dry-run", "--json"], { ...env, RECOVER_RECORD_KEEP: "0" });
    expect(forever).toSucceed();
    const reports = JSON.parse(forever.stdout) as { what?: string; decisions: { keep: boolean }[] }[];
    expect(reports.filter((r) => r.what === "recovery records")).toHaveLength(2);
    expect(reports.flatMap((r) => (r.what ? r.decisions : [])).every((d) => d.keep)).toBe(true);

    const r = await shinkei(["backup", "prune"], env);
    expect(r).toSucceed();
    expect(r.stdout).toMatch(new RegExp(`${old.record}\\s+deleted`));
    const gone = [old.record, old.undo, orphan.undo];
    expect((await readdir(dir)).sort()).toEqual(localBefore.filter((n) => !gone.includes(n)));
    expect(await keys(folder)).toEqual(remoteBefore.filter((n) => n !== old.record && n !== old.undo));
    expect(await readdir(dir)).toContain("shinkei_recovery_notes.txt");

    // The young record still undoes; the pruned one is simply not there any more.
    const u = await shinkei(["recover", "--undo", young.path, "--yes", "--confirm-database", db.name], env);
    expect(u).toSucceed();
    const pruned = await shinkei(["recover", "--undo", join(dir, old.record), "--dry-run"], env);
    expect(pruned.code).not.toBe(0);
    expect(pruned.stderr).toContain(`no recovery record ${join(dir, old.record)}`);
  });
});
