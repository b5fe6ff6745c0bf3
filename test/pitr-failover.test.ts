import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { chmod, readdir } from "node:fs/promises";
import { startCluster, startStandby, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { receiverFlushed, startBackupService, streamingEnv } from "./support/wal.ts";
import { shinkei } from "./support/cli.ts";
import { insertLsnOf } from "./support/pitr-archive.ts";
import type { Service } from "./support/process.ts";
import { connect, ensureDatabase, type Sql } from "../src/pg/db.ts";

/*
 * A failover, then the point-in-time window and restores: the old timeline's last segment stays a
 * partial, and must still end its window. Apart from pitr-sequences.test.ts so the two run side by side.
 */

setDefaultTimeout(180_000);

let scratchRoot: string;
let service: Service | undefined;

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
  scratchRoot = await tempDir("pitr-failover-scratch");
  await chmod(scratchRoot, 0o755);
});
afterAll(() => {
  service?.proc.kill("SIGKILL");
});

describe("a failover (standby promoted to timeline 2, the service moved to it), then pitr status and restores", () => {
  test("moments on timeline 1 and on timeline 2 recover, before and after a base backup on timeline 2", async () => {
    service?.proc.kill("SIGKILL");
    service = undefined;
    const old = await startCluster({ maxSlotWalKeepSize: "64MB" });
    let standby: TestCluster | undefined;
    const primary = connect(old.url("seq_tl"), { max: 2 });
    let db: Sql | undefined;
    try {
      await ensureDatabase(old.url("seq_tl"));
      await primary`create table notes (id serial primary key, body text not null)`;
      standby = await startStandby(old);
      const dir = await tempDir("pitrseq-tl");
      const envOn = (url: string) => streamingEnv(url, dir, { TMPDIR: scratchRoot, WAL_SLOT: "seq_tl" });
      let env = envOn(old.url("seq_tl"));
      service = await startBackupService(env);
      expect(await shinkei(["backup", "base"], env)).toSucceed();
      const mark = async () => {
        await Bun.sleep(300);
        const t = new Date().toISOString();
        await Bun.sleep(300);
        return t;
      };
      await primary`insert into notes (body) values ('tl1 a')`;
      const t1 = await mark();
      await primary`insert into notes (body) values ('tl1 b')`;
      const end1 = await insertLsnOf(primary);
      await receiverFlushed(primary, end1);
      db = connect(standby.url("seq_tl"), { max: 2 });
      const sdb = db;
      await until("the standby to replay timeline 1", async () => {
        const [r] = await sdb<{ ok: boolean }[]>`select pg_last_wal_replay_lsn() >= ${end1}::pg_lsn as ok`;
        return r!.ok;
      });
      // The primary is lost; the standby is promoted and the backup service moved to it.
      await service.stop();
      service = undefined;
      await primary.end({ timeout: 1 });
      await old.run("pg_ctl", ["-D", old.dataDir, "stop", "-m", "immediate", "-w"]);
      await db`select pg_promote(true, 30)`;
      await db`insert into notes (body) values ('tl2 a')`;
      const t2 = await mark();
      await db`insert into notes (body) values ('tl2 b')`;
      env = envOn(standby.url("seq_tl"));
      service = await startBackupService(env);
      await db`select pg_logical_emit_message(false, 'shinkei-test', 'after t2')`;
      await receiverFlushed(db, await insertLsnOf(db));

      const at = async (t: string) => {
        const r = await shinkei(["pitr", "restore", "--to", t, "--json"], env);
        try {
          return r.code === 0 ? { rows: await rowsAt(JSON.parse(r.stdout).url) } : { refused: r.stderr };
        } finally {
          await shinkei(["pitr", "cleanup"], env);
        }
      };
      // Before any base backup on timeline 2: the window of timeline 1 runs from the base backup to
      // the last WAL received on it (its last segment, a partial), and a moment in it recovers.
      const status1 = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
      expect(status1.baseBackups.map((b: { walComplete: boolean }) => b.walComplete)).toEqual([true]);
      expect(status1.gaps).toEqual([]);
      const tl1 = status1.timelines.find((x: { timeline: number }) => x.timeline === 1);
      expect(Date.parse(tl1.latest)).toBeGreaterThanOrEqual(Date.parse(tl1.earliest));
      expect(Date.parse(status1.window.latest)).toBeGreaterThan(Date.parse(t1));
      const early = await at(t1);
      expect(early).toEqual({ rows: ["tl1 a"] });
      // A moment on timeline 2, which has no base backup yet: inside the window (timeline 1's base
      // backup, then the switch), and recovered exactly.
      const status2 = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
      expect(status2.window.timeline).toBe(2);
      expect(status2.window.earliest).toBe(tl1.earliest);
      expect(Date.parse(status2.window.latest)).toBeGreaterThan(Date.parse(t2));
      expect(await at(t2)).toEqual({ rows: ["tl1 a", "tl1 b", "tl2 a"] });
      // A drill now: its restore point lies on timeline 2, reached from timeline 1's base backup.
      const drill = await shinkei(["pitr", "drill", "--json"], env);
      expect(drill).toSucceed();
      expect(JSON.parse(drill.stdout).passed).toBe(true);

      // A base backup on timeline 2: both moments recover.
      expect(await shinkei(["backup", "base"], env)).toSucceed();
      await db`insert into notes (body) values ('tl2 c')`;
      await db`select pg_switch_wal()`;
      await db`insert into notes (body) values ('tl2 d')`;
      await receiverFlushed(db, await insertLsnOf(db));
      expect({ t1: await at(t1), t2: await at(t2) }).toEqual({
        t1: { rows: ["tl1 a"] },
        t2: { rows: ["tl1 a", "tl1 b", "tl2 a"] },
      });
      expect(await leftovers()).toEqual([]);
    } finally {
      service?.proc.kill("SIGKILL");
      service = undefined;
      await db?.end({ timeout: 1 });
      await primary.end({ timeout: 1 });
      await standby?.stop();
      await old.stop();
    }
  });
});
