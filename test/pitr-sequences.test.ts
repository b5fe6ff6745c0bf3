import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { chmod, readdir } from "node:fs/promises";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { receiverFlushed, receiverStreaming, startBackupService, streamingEnv } from "./support/wal.ts";
import { shinkei } from "./support/cli.ts";
import { insertLsnOf } from "./support/pitr-archive.ts";
import type { Service } from "./support/process.ts";
import { connect, ensureDatabase, type Sql } from "../src/pg/db.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { deleteWorld, digest, recordOf, writer } from "./support/recover.ts";
import { takeBackup } from "./support/cli.ts";

/*
 * Sequences of documented point-in-time operations, each used as the README says, checked against
 * the README's promises after the last one.
 */

setDefaultTimeout(180_000);

let cluster: TestCluster;
let sql: Sql;
let scratchRoot: string;
let service: Service | undefined;

const now = async () =>
  (
    await sql<
      { t: string }[]
    >`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`
  )[0]!.t;
const leftovers = async () => (await readdir(scratchRoot)).filter((n) => n.startsWith("shinkei-"));
const rowsAt = async (url: string) => {
  const r = connect(url, { max: 1 });
  try {
    return (await r<{ body: string }[]>`select body from notes order by id`).map((x) => x.body);
  } finally {
    await r.end({ timeout: 1 });
  }
};

beforeAll(async () => {
  // A slot may hold 4 MiB (four test segments) of WAL for a stopped receiver; past that it is lost.
  cluster = await startCluster({ maxSlotWalKeepSize: "4MB" });
  await ensureDatabase(cluster.url("shinkei"));
  sql = connect(cluster.url("shinkei"), { max: 2 });
  scratchRoot = await tempDir("pitrseq-scratch");
  await chmod(scratchRoot, 0o755);
});
afterAll(async () => {
  service?.proc.kill("SIGKILL");
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
});

describe("base backup, an outage that loses the slot, a new base backup, then pitr restore --to the outage", () => {
  test("a moment whose WAL the archive never received is not presented as recovered", async () => {
    const dir = await tempDir("pitrseq-noslot");
    const env = streamingEnv(cluster.url("shinkei"), dir, { TMPDIR: scratchRoot });
    await sql`create table notes (id serial primary key, body text not null)`;
    service = await startBackupService(env);
    expect(await shinkei(["backup", "base"], env)).toSucceed();
    await sql`insert into notes (body) values ('before the outage')`;
    await receiverFlushed(sql, await insertLsnOf(sql));

    // The backup service is down (a crash, a long deploy) for longer than max_slot_wal_keep_size
    // covers: "the slot turns lost ... streaming goes on from the server's position, and the hole
    // shows as a named gap until the next base backup".
    await service.stop();
    service = undefined;
    await sql`select pg_switch_wal()`;
    await sql`insert into notes (body) values ('committed during the outage')`;
    await Bun.sleep(300);
    const during = await now();
    await Bun.sleep(300);
    for (let i = 0; i < 8; i++) {
      await sql`insert into notes (body) values (${`outage ${i}`})`;
      await sql`select pg_switch_wal()`;
      await sql`checkpoint`;
    }

    expect((await sql`select wal_status from pg_replication_slots where slot_name = 'shinkei'`)[0]?.wal_status).toBe(
      "lost",
    );
    // Back up: streaming resumes at the server's position, and a new base backup is taken.
    service = await startBackupService(env);
    await service.waitFor((l) => String(l.msg).startsWith("wal gap"), 30_000);
    await receiverStreaming(sql);
    await receiverFlushed(sql, await insertLsnOf(sql));
    expect(await shinkei(["backup", "base"], env)).toSucceed();
    await sql`insert into notes (body) values ('after the outage')`;
    await sql`select pg_switch_wal()`;
    await receiverFlushed(sql, await insertLsnOf(sql));

    let status = await shinkei(["pitr", "status", "--json"], env);
    await until("both base backups to have their WAL", async () => {
      status = await shinkei(["pitr", "status", "--json"], env);
      return JSON.parse(status.stdout).baseBackups.every((b: { walComplete: boolean }) => b.walComplete);
    });
    expect(status).toSucceed();
    const s = JSON.parse(status.stdout);
    // Both base backups have their WAL; the outage is a named gap between them.
    expect(s.baseBackups.map((b: { walComplete: boolean }) => b.walComplete)).toEqual([true, true]);
    expect(s.gaps).toHaveLength(1);

    const r = await shinkei(["pitr", "restore", "--to", during, "--json"], env);
    try {
      // The archive holds no WAL from the outage: "recovering all of it, which is the state at the
      // target" would be false. Refused, naming the gap, with nothing left behind.
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("cannot be reached: the WAL archive has a gap after");
      expect(r.stderr).not.toContain("which is the state at the target");
      expect(await leftovers()).toEqual([]);
    } finally {
      await shinkei(["pitr", "cleanup"], env);
    }
  });
});

describe("pitr restore --apply, then pitr restore --to a moment before the apply, then a drill", () => {
  test("the archive runs on across the apply: both sides of it recover, and the drill passes", async () => {
    service?.proc.kill("SIGKILL");
    service = undefined;
    const url = cluster.url("seq_apply");
    await ensureDatabase(url);
    const db = connect(url, { max: 2 });
    try {
      const dir = await tempDir("pitrseq-apply");
      const env = streamingEnv(url, dir, { TMPDIR: scratchRoot, WAL_SLOT: "seq_apply" });
      service = await startBackupService(env);
      expect(await shinkei(["backup", "base"], env)).toSucceed();
      const body = async () => (await db<{ body: string }[]>`select body from notes order by id`).map((x) => x.body);
      const nowIn = async () =>
        (
          await db<
            { t: string }[]
          >`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`
        )[0]!.t;
      const mark = async () => {
        await Bun.sleep(300);
        const t = await nowIn();
        await Bun.sleep(300);
        return t;
      };
      await db`create table notes (id serial primary key, body text not null)`;
      await db`insert into notes (body) values ('one')`;
      const t1 = await mark();
      await db`insert into notes (body) values ('two')`;
      const t2 = await mark();
      await receiverFlushed(db, await insertLsnOf(db));

      const applied = await shinkei(
        ["pitr", "restore", "--to", t1, "--apply", "--yes", "--confirm-database", "seq_apply"],
        env,
      );
      expect(applied.stderr).not.toContain("✖");
      expect(applied).toSucceed();
      expect(await body()).toEqual(["one"]);
      const t3 = await mark();
      await db`insert into notes (body) values ('three')`;
      const t4 = await mark();
      await db`select pg_logical_emit_message(false, 'shinkei-test', 'after t4')`;
      await receiverFlushed(db, await insertLsnOf(db));

      const status = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
      expect(status.gaps).toEqual([]);
      expect(Date.parse(status.window.latest)).toBeGreaterThan(Date.parse(t4));

      const expectAt = async (t: string, rows: string[]) => {
        const r = await shinkei(["pitr", "restore", "--to", t, "--stop", "--json"], env);
        expect(r.stderr).not.toContain("✖");
        expect(r).toSucceed();
        const k = await shinkei(["pitr", "restore", "--to", t, "--json"], env);
        expect(k).toSucceed();
        try {
          expect(await rowsAt(JSON.parse(k.stdout).url)).toEqual(rows);
        } finally {
          await shinkei(["pitr", "cleanup"], env);
        }
      };
      await expectAt(t2, ["one", "two"]); // before the apply
      await expectAt(t3, ["one"]); // after it
      await expectAt(t4, ["one", "three"]);
      // Back to before the apply, applied: the apply is undone by the archive.
      const back = await shinkei(
        ["pitr", "restore", "--to", t2, "--apply", "--yes", "--confirm-database", "seq_apply"],
        env,
      );
      expect(back).toSucceed();
      expect(await body()).toEqual(["one", "two"]);
      const drill = await shinkei(["pitr", "drill", "--json"], env);
      expect(drill.stderr).not.toContain("✖");
      expect(drill).toSucceed();
      expect(JSON.parse(drill.stdout).passed).toBe(true);
      expect(await leftovers()).toEqual([]);
    } finally {
      await db.end({ timeout: 1 });
    }
  });
});

describe("recover, pitr restore --apply to a moment after it, recover --undo", () => {
  test("the recovery is undone: a restore of the database is no write of its own", async () => {
    service?.proc.kill("SIGKILL");
    service = undefined;
    const url = cluster.url("seq_undo");
    await ensureDatabase(url);
    const db = connect(url, { max: 2 });
    try {
      await migrate(db);
      await writer(db, "alice@example.com");
      await writer(db, "bob@example.com");
      const dir = await tempDir("pitrseq-undo");
      const env = streamingEnv(url, dir, { TMPDIR: scratchRoot, WAL_SLOT: "seq_undo" });
      service = await startBackupService(env);
      expect(await shinkei(["backup", "base"], env)).toSucceed();
      expect(await takeBackup(env)).toBeTruthy();
      await deleteWorld(db, "alice@example.com", "alice@example.com world 2");
      const lost = await digest(db, "alice@example.com");
      const r = await shinkei(
        ["recover", "--user", "alice@example.com", "--yes", "--confirm-database", "seq_undo"],
        env,
      );
      expect(r).toSucceed();
      const recovered = await digest(db, "alice@example.com");
      expect(recovered.rows).toBeGreaterThan(lost.rows);
      await Bun.sleep(300);
      const t = new Date().toISOString();
      await Bun.sleep(300);
      await db`insert into worlds (owner_id, name) select id, 'bob later' from users where email = 'bob@example.com'`;
      await receiverFlushed(db, await insertLsnOf(db));

      const applied = await shinkei(
        ["pitr", "restore", "--to", t, "--apply", "--yes", "--confirm-database", "seq_undo"],
        env,
      );
      expect(applied.stderr).not.toContain("✖");
      expect(applied).toSucceed();
      expect(await digest(db, "alice@example.com")).toEqual(recovered);
      // The recovery committed before the moment restored: the restored database holds its row again.
      const history = await shinkei(["recover", "--history", "--json"], env);
      expect(history).toSucceed();
      const listed = JSON.parse(history.stdout) as { owner?: string; state: string }[];
      expect(listed.map((h) => [h.owner, h.state])).toEqual([["alice@example.com", "applied"]]);
      const u = await shinkei(
        ["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", "seq_undo"],
        env,
      );
      expect(u.stderr).toBe("");
      expect(u).toSucceed();
      expect(await digest(db, "alice@example.com")).toEqual(lost);
      expect(await leftovers()).toEqual([]);
    } finally {
      await db.end({ timeout: 1 });
    }
  });
});

describe("reset, then pitr restore --to a moment before it, applied", () => {
  test("the rows from before the reset come back into the live database", async () => {
    service?.proc.kill("SIGKILL");
    service = undefined;
    const url = cluster.url("seq_reset");
    await ensureDatabase(url);
    const db = connect(url, { max: 2 });
    try {
      await migrate(db);
      await writer(db, "zed@example.org");
      const dir = await tempDir("pitrseq-reset");
      const env = streamingEnv(url, dir, { TMPDIR: scratchRoot, WAL_SLOT: "seq_reset" });
      service = await startBackupService(env);
      expect(await shinkei(["backup", "base"], env)).toSucceed();
      const zed = await digest(db, "zed@example.org");
      await Bun.sleep(300);
      const t = new Date().toISOString();
      await Bun.sleep(300);
      const reset = await shinkei(["reset", "--force", "--confirm-database", "seq_reset"], env);
      expect(reset).toSucceed();
      expect((await digest(db, "zed@example.org")).rows).toBe(0);
      await receiverFlushed(db, await insertLsnOf(db));
      const back = await shinkei(
        ["pitr", "restore", "--to", t, "--apply", "--yes", "--confirm-database", "seq_reset"],
        env,
      );
      expect(back.stderr).not.toContain("✖");
      expect(back).toSucceed();
      expect(await digest(db, "zed@example.org")).toEqual(zed);
      expect(await leftovers()).toEqual([]);
    } finally {
      await db.end({ timeout: 1 });
    }
  });
});
