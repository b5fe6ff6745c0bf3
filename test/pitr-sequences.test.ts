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
      if (r.code === 0) {
        const out = JSON.parse(r.stdout);
        // Presented as the state at `during`: it must hold what was committed before it.
        expect(await rowsAt(out.url)).toContain("committed during the outage");
      } else {
        // Refused: nothing left behind.
        expect(await leftovers()).toEqual([]);
      }
      // "the archive holds no commit after the target: recovering all of it, which is the state at
      // the target" is false here: the archive holds no WAL at all from the outage.
      expect(r.stderr).not.toContain("which is the state at the target");
    } finally {
      await shinkei(["pitr", "cleanup"], env);
    }
  });
});
