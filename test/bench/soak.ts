/**
 * `bun run bench:soak`: the continuous archive under write load while faults strike at random
 * moments, then `shinkei pitr restore --to latest`, which must hold every acknowledged insert.
 *   --seconds 600   how long the load runs (the issue's size; `--seconds 20` is a quick look)
 *   --rate 300      inserts per second asked for
 *   --seed 1        the faults' order and timing, to replay a run
 * Faults: the receiver killed (SIGKILL), the disk filled and freed (BACKUP_DIR on a 256 MiB tmpfs:
 * skipped where mounting one is not permitted), the S3 server stopped and started, PostgreSQL
 * restarted (fast). All on a cluster, an s3rver and a folder of its own; fsync on.
 * Prints the faults injected, the acknowledged rows and the rows lost (must be 0); exits 1 on a loss.
 */
import { mkdir, open, rm } from "node:fs/promises";
import { join } from "node:path";
import postgres from "postgres";
import { startCluster } from "../support/cluster.ts";
import { TestS3 } from "../support/s3.ts";
import { arg, timed } from "./tools.ts";
import { loadConfig } from "../../src/config/index.ts";
import { connect } from "../../src/pg/db.ts";
import { startWalStream } from "../../src/wal/stream.ts";
import { createBaseBackup } from "../../src/wal/base.ts";
import { RECEIVER_APP_NAME } from "../../src/wal/receiver.ts";

const seconds = Number(arg("seconds", "600"));
const rate = Number(arg("rate", "300"));
let seed = Number(arg("seed", "1"));
const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
const between = (a: number, b: number) => a + random() * (b - a);

const root = join(import.meta.dir, "..", "..");
const bin = join(root, "dist", "shinkei");
const work = join("/tmp", `shinkei-bench-soak-${process.pid}`);
const backupDir = join(work, "backups");
await mkdir(backupDir, { recursive: true });
const say = (msg: string) => console.log(`${new Date().toISOString().slice(11, 19)} ${msg}`);

await timed(["bun", "run", "build"], { cwd: root });
const tmpfs =
  process.getuid?.() === 0 &&
  (await Bun.spawn(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs", backupDir]).exited) === 0;
say(
  tmpfs
    ? "BACKUP_DIR on a 256 MiB tmpfs: the disk-full fault is on"
    : "mounting a tmpfs is not permitted here: the disk-full fault is skipped",
);

const cluster = await startCluster({
  // PostgreSQL's default segment size, as users run it (test clusters use 1 MiB).
  walSegmentMiB: 16,
  settings: { fsync: "on", synchronous_commit: "on", max_slot_wal_keep_size: "1GB" },
});
const s3 = await TestS3.start();
const admin = postgres(cluster.url(), { max: 1, onnotice: () => {} });
await admin`create database soak`;
await admin.end();
const env: Record<string, string> = {
  DATABASE_URL: cluster.url("soak"),
  BACKUP_DIR: backupDir,
  WAL_ARCHIVE: "stream",
  WAL_PARTIAL_UPLOAD_INTERVAL: "5s",
  ...s3.env("soak/"),
};
const config = loadConfig(env);
const sql = connect(config.databaseUrl, { max: 4 });
await sql`create table soak (id bigint primary key, at timestamptz not null default now())`;
// What the service reported of the faults, counted; its errors are printed as they come.
const seen = { receiverRestarts: 0, diskFullReports: 0, spaceReturned: 0, partialsRepaired: 0, gapsReported: 0 };
const stream = await startWalStream({
  sql,
  config,
  backoffMs: { min: 500, max: 5000 },
  log: (l) => {
    const msg = String(l.msg);
    if (msg === "wal receiver exited; restarting") seen.receiverRestarts++;
    if (msg.startsWith("disk full")) seen.diskFullReports++;
    if (msg.startsWith("disk space returned") || msg.includes("there is room again")) seen.spaceReturned++;
    if (msg.startsWith("wal partial padded") || msg.startsWith("wal partial removed")) seen.partialsRepaired++;
    if (msg.startsWith("wal gap")) seen.gapsReported++;
    if (l.level === "error") say(`service: ${msg}${l.detail ? ` (${String(l.detail)})` : ""}`);
  },
});
await createBaseBackup({ sql, url: config.databaseUrl, backupDir, reason: "manual", fast: true });
say("base backup taken; load and faults start");

// The load: inserts at `rate`, each id acknowledged only when its commit returned.
const acknowledged = new Set<number>();
let failed = 0;
let stopLoad = false;
const load = (async () => {
  let next = 1;
  const started = performance.now();
  const inflight = new Set<Promise<void>>();
  while (!stopLoad) {
    const due = Math.floor(((performance.now() - started) / 1000) * rate);
    while (next <= due && inflight.size < 64) {
      const id = next++;
      const p = sql`insert into soak (id) values (${id})`
        .then(
          () => void acknowledged.add(id),
          () => void failed++,
        )
        .finally(() => inflight.delete(p));
      inflight.add(p);
    }
    await Bun.sleep(5);
  }
  await Promise.all(inflight);
})();

// The faults, one at a time, at random moments.
const injected: Record<string, number> = {
  "receiver killed": 0,
  "disk filled and freed": 0,
  "S3 stopped and started": 0,
  "PostgreSQL restarted": 0,
};
const filler = join(backupDir, "filler");
async function fillDisk(holdMs: number) {
  const f = await open(filler, "w");
  const block = Buffer.alloc(1 << 20);
  try {
    for (;;) await f.write(block);
  } catch {
    // ENOSPC: the disk is full.
  } finally {
    await f.close();
  }
  // A new segment now: the receiver must create and pad one on the full disk.
  await sql`select pg_switch_wal()`.catch(() => {});
  await Bun.sleep(holdMs);
  await rm(filler, { force: true });
}
const faults: [string, () => Promise<void>][] = [
  [
    "receiver killed",
    async () => {
      const pid = stream.receiver.pid();
      if (pid) process.kill(pid, "SIGKILL");
    },
  ],
  [
    "S3 stopped and started",
    async () => {
      await s3.stop();
      await Bun.sleep(between(2000, 10_000));
      await s3.start();
    },
  ],
  [
    "PostgreSQL restarted",
    async () => {
      // With a log file: without one the new server writes to (and holds open) pg_ctl's output.
      const r = await cluster.run("pg_ctl", [
        "-D",
        cluster.dataDir,
        "restart",
        "-m",
        "fast",
        "-w",
        "-t",
        "60",
        "-l",
        join(cluster.dataDir, "server.log"),
      ]);
      if (r.code !== 0) throw new Error(`pg_ctl restart failed: ${r.output}`);
    },
  ],
  ...(tmpfs ? [["disk filled and freed", () => fillDisk(between(2000, 8000))] as [string, () => Promise<void>]] : []),
];
const end = Date.now() + seconds * 1000;
while (Date.now() < end - 3000) {
  await Bun.sleep(Math.min(between(2000, Math.max(3000, seconds * 40)), Math.max(0, end - Date.now() - 3000)));
  if (Date.now() >= end - 3000) break;
  const [name, run] = faults[Math.floor(random() * faults.length)]!;
  say(`fault: ${name}`);
  await run();
  injected[name]!++;
}
await Bun.sleep(Math.max(0, end - Date.now()));
stopLoad = true;
await load;
say(`load stopped: ${acknowledged.size} inserts acknowledged, ${failed} failed (not acknowledged)`);

// Everything the server wrote reaches the archive (the slot kept it through every fault).
const [{ lsn }] = (await sql`select pg_current_wal_insert_lsn()::text as lsn`) as unknown as [{ lsn: string }];
const deadline = Date.now() + 180_000;
for (;;) {
  const [r] = await sql`select flush_lsn >= ${lsn}::pg_lsn as ok from pg_stat_replication
      where application_name = ${RECEIVER_APP_NAME}`.catch(() => [undefined]);
  if (r?.ok) break;
  if (Date.now() > deadline) throw new Error(`the receiver did not reach ${lsn} within 3 minutes of the load's end`);
  await Bun.sleep(200);
}
await stream.drain();
say("archive caught up; restoring to latest");

const restored = await timed([bin, "pitr", "restore", "--to", "latest", "--json"], { env });
const out = JSON.parse(restored.stdout) as { url: string };
const scratch = postgres(out.url, { max: 1, onnotice: () => {} });
const ids = new Set((await scratch<{ id: string }[]>`select id::text from soak`).map((r) => Number(r.id)));
await scratch.end();
await timed([bin, "pitr", "cleanup"], { env });
const lost = [...acknowledged].filter((id) => !ids.has(id));

await stream.stop();
await sql.end({ timeout: 1 });
await cluster.stop();
await s3.stop();
if (tmpfs) await Bun.spawn(["umount", "-l", backupDir]).exited;
await rm(work, { recursive: true, force: true });

const figures = {
  seconds,
  rate,
  faultsInjected: Object.values(injected).reduce((a, b) => a + b, 0),
  faults: injected,
  diskFullFault: tmpfs,
  serviceSaw: seen,
  acknowledgedRows: acknowledged.size,
  notAcknowledged: failed,
  restoredRows: ids.size,
  rowsLost: lost.length,
};
console.log(JSON.stringify(figures, null, 2));
if (lost.length) {
  console.error(`LOST ${lost.length} acknowledged rows, the first: ${lost.slice(0, 10).join(", ")}`);
  process.exit(1);
}
process.exit(0);
