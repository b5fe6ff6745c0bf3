import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { shinkei } from "./support/cli.ts";
import { Service } from "./support/process.ts";
import { connect, type Sql } from "../src/db.ts";
import { RECEIVER_APP_NAME } from "../src/wal/receiver.ts";

// A cluster of our own and the compiled binary: seconds per step on a busy 2-core machine.
setDefaultTimeout(90_000);

let cluster: TestCluster;
let sql: Sql;
let dir: string;
let env: Record<string, string>;
let service: Service | undefined;


beforeAll(async () => {
  cluster = await startCluster();
  dir = await tempDir("pitr");
  env = {
    DATABASE_URL: cluster.url("shinkei"),
    BACKUP_DIR: dir,
    WAL_ARCHIVE: "stream",
    // Far from now: only what the tests start runs.
    BACKUP_SCHEDULE: "0 0 1 1 *",
    BASE_BACKUP_SCHEDULE: "0 0 1 1 *",
  };
  service = await Service.start(["backup-service"], env);
  await service.waitFor((l) => l.msg === "wal receiver started", 30_000);
  sql = connect(cluster.url("shinkei"), { max: 2 });
});
afterAll(async () => {
  if (service) service.proc.kill("SIGKILL");
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
});

describe("base backups and point-in-time status", () => {
  test("backup base, then streamed WAL: pitr status shows a window from the base backup to within seconds of the last commit", async () => {
    const b = await shinkei(["backup", "base", "--json"], env);
    expect(b.stderr).toBe("");
    expect(b.code).toBe(0);
    const base = JSON.parse(b.stdout);
    expect(base.file).toMatch(/^shinkei_base_\d{8}_\d{6}\.tar\.gz$/);
    expect(base.timeline).toBe(1);
    expect(base.startLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(base.sizeBytes).toBeGreaterThan(1000);
    // The server's own backup_manifest is kept beside it, and the tar holds the data directory.
    expect(await readdir(join(dir, "base"))).toContain(base.backupManifestFile);
    const tar = Bun.spawnSync(["tar", "-tzf", join(dir, "base", base.file)]);
    expect(tar.exitCode).toBe(0);
    expect(tar.stdout.toString()).toContain("PG_VERSION");
    expect(tar.stdout.toString()).toContain("global/pg_control");

    await sql`create table if not exists notes (body text, at timestamptz default clock_timestamp())`;
    const [{ at, lsn }] = (await sql<{ at: Date; lsn: string }[]>`insert into notes (body) values ('last words') returning at, pg_current_wal_insert_lsn()::text as lsn`) as any;
    await until("the receiver to flush the last commit", async () => {
      const [r] = await sql<{ ok: boolean }[]>`select flush_lsn >= ${lsn}::pg_lsn as ok from pg_stat_replication where application_name = ${RECEIVER_APP_NAME}`;
      return r?.ok;
    });

    const r = await shinkei(["pitr", "status", "--json"], env);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.archive).toBe("stream");
    expect(s.window.timeline).toBe(1);
    expect(s.window.earliest).toBe(base.finishedAt);
    expect(Math.abs(Date.parse(s.window.latest) - at.getTime())).toBeLessThan(5000);
    expect(s.gaps).toEqual([]);
    expect(s.baseBackups).toEqual([{ file: base.file, finishedAt: base.finishedAt, timeline: 1, startLsn: base.startLsn, stopLsn: base.stopLsn, walComplete: true }]);
    expect(s.receiver.connected).toBe(true);
    expect(s.receiver.state).toBe("streaming");
    expect(s.receiver.lagBytes).toBeLessThan(1024 * 1024);
    expect(s.slot.name).toBe("shinkei");
    expect(s.slot.walStatus).toBe("reserved");
    expect(typeof s.slot.safeWalSize).toBe("number");
    expect(s.problems).toEqual([]);
    expect(s.timelines[0].segments).toBeGreaterThanOrEqual(1);

    // The window shows in backup --list and in /ready too.
    const list = await shinkei(["backup", "--list"], env);
    expect(list.stdout).toContain(`point-in-time window: ${base.finishedAt} .. `);
    const server = await Service.start(["serve"], { ...env, HOST: "127.0.0.1", PORT: "0", COOKIE_SECURE: "false" });
    try {
      const listening = await server.waitFor((l) => l.msg === "listening");
      const ready = await (await fetch(`${listening.url}/ready`)).json();
      expect(ready.pitr.earliest).toBe(base.finishedAt);
      expect(ready.pitr.timeline).toBe(1);
      expect(ready.pitr.gaps).toBe(0);
    } finally {
      await server.stop();
    }
  });

  test("backup check passes on a healthy archive, then fails on a gap after the newest base backup", async () => {
    // The dump checks come first in a healthy run: a dump and a drill.
    expect((await shinkei(["backup"], env)).code).toBe(0);
    expect((await shinkei(["backup", "drill"], env)).code).toBe(0);
    for (let i = 0; i < 3; i++) {
      await sql`insert into notes (body) values (${`n${i}`})`;
      await sql`select pg_switch_wal()`;
    }
    const walDir = join(dir, "wal", "00000001");
    const archived = async () => (await readdir(walDir)).filter((n) => n.endsWith(".json")).sort();
    await until("three more archived segments", async () => (await archived()).length >= 4);
    const ok = await shinkei(["backup", "check", "--json"], env);
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout).pitr.window.earliest).not.toBeNull();

    // Lose one archived segment in the middle: a real hole in the archive.
    const names = await archived();
    const victim = names.at(-2)!.replace(/\.json$/, "");
    for (const f of (await readdir(walDir)).filter((n) => n.startsWith(victim))) await rm(join(walDir, f));
    const bad = await shinkei(["backup", "check"], env);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("WAL gap after the newest base backup");
    expect(bad.stderr).toContain(victim);
    const s = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
    expect(s.gaps).toEqual([{ timeline: 1, from: victim, to: victim, segments: 1 }]);
  });

  test("a service killed with SIGKILL takes its receiver with it; backup check then fails on lag", async () => {
    service!.proc.kill("SIGKILL");
    await service!.proc.exited;
    service = undefined;
    await until("the slot to be released", async () => (await sql`select active from pg_replication_slots where slot_name = 'shinkei'`)[0]?.active === false);
    await sql`insert into notes (body) values ('unarchived')`;
    const r = await until("backup check to fail on lag", async () => {
      const c = await shinkei(["backup", "check"], { ...env, PITR_MAX_LAG: "1s" });
      return c.code === 1 && c.stderr.includes("behind the server") ? c : null;
    });
    expect(r.stderr).toContain("PITR_MAX_LAG");
    const s = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
    expect(s.receiver.connected).toBe(false);
    expect(s.receiver.lagBytes).toBeGreaterThan(0);
    expect(s.slot.active).toBe(false);
  });
});
