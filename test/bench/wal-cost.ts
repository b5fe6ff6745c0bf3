/**
 * `bun run bench:wal-cost`: what the streamed WAL archive costs the primary's writers, and where
 * the receiving side spends its CPU. Rounds of pgbench on a cluster of its own (fsync on), each
 * round running every mode once in a rotating order, so a shared machine's noise falls on every
 * mode alike; the figures are medians over rounds.
 *   --rounds 5       rounds                              --seconds 15   length of each pgbench run
 *   --scale 10       pgbench scale                       --modes off,ours,bare
 *   --checkpoint     a checkpoint before every run (WAL of full-page images: ten times the bytes per commit)
 * Modes: `off` no receiver; `ours` shinkei's backup service (WAL_ARCHIVE=stream, WAL_SYNC on);
 * `async` the same with WAL_SYNC=false; `bare` pg_receivewal --synchronous alone; a suffix `-n<N>`
 * runs the receiver at nice N (`ours-n0`: WAL_RECEIVER_NICE=0); `before` is `ours` from the binary
 * `--before-bin` names (another commit's `bun run build`), to measure a change in the same rounds.
 * CPU per MiB of WAL: user+system time (/proc/<pid>/stat) of pg_receivewal and, apart, of the
 * service's own process (sealing finished segments: read, hash, compress, write, fsync), from the
 * start of pgbench until every segment it finished is archived, over the WAL it wrote (summed over
 * rounds), and of the server's walsender that streams to it.
 * Writes test/bench/wal-cost-results.json.
 */
import { mkdir, readdir } from "node:fs/promises";
import { cpus, setPriority, tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { startCluster } from "../support/cluster.ts";
import { arg, median, timed, writeResults } from "./tools.ts";
import { parseLsn } from "../../src/wal/segments.ts";
import { RECEIVER_APP_NAME } from "../../src/wal/receiver.ts";

const rounds = Number(arg("rounds", "5"));
const seconds = Number(arg("seconds", "15"));
const scale = Number(arg("scale", "10"));
const modes = arg("modes", "off,ours,bare").split(",") as Mode[];
/** `-n10`: the receiver at nice 10 (`ours-n0`: WAL_RECEIVER_NICE=0). */
type Mode = "off" | "ours" | `ours-n${number}` | "async" | "bare" | `bare-n${number}` | "before";
/** `before`: the service of another build (say, the commit before a change), as `ours` runs it. */
const beforeBin = arg("before-bin", "");
const root = join(import.meta.dir, "..", "..");
const bin = join(root, "dist", "shinkei");
const work = join(tmpdir(), `shinkei-bench-wal-cost-${process.pid}`);
await mkdir(work, { recursive: true });

await timed(["bun", "run", "build"], { cwd: root });
/** A checkpoint before every run: each then starts with full-page images (the WAL after a checkpoint). */
const checkpoints = process.argv.includes("--checkpoint");
// No checkpoint of the server's own timing: one would fill a single mode's run with full-page images.
const cluster = await startCluster({
  walSegmentMiB: 16,
  // The slot of a mode not running keeps the WAL the other modes write meanwhile.
  maxSlotWalKeepSize: "4GB",
  settings: { fsync: "on", synchronous_commit: "on", checkpoint_timeout: "1h", max_wal_size: "16GB" },
});
const url = cluster.url("bench");
const admin = postgres(cluster.url(), { max: 1, onnotice: () => {} });
await admin`create database bench`;
const sql = postgres(url, { max: 2, onnotice: () => {} });
const pgEnv = { PGHOST: "127.0.0.1", PGPORT: String(cluster.port), PGUSER: "postgres", PGDATABASE: "bench" };
await timed(["pgbench", "-i", "-q", "-s", String(scale)], { env: pgEnv });
await sql`select pg_create_physical_replication_slot('bench_bare', true)`;

const TICKS = 100; // USER_HZ on Linux
/** user+system CPU of a process, in ms; 0 once it is gone. */
async function cpuMs(pid: number | undefined): Promise<number> {
  if (!pid) return 0;
  const stat = await Bun.file(`/proc/${pid}/stat`)
    .text()
    .catch(() => "");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) * 1000) / TICKS;
}
/** The pg_receivewal a service runs: a child of its process (setpriv execs into it). */
async function childOf(pid: number): Promise<number | undefined> {
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const kids = await Bun.file(`/proc/${pid}/task/${task}/children`)
      .text()
      .catch(() => "");
    const first = kids.trim().split(/\s+/).filter(Boolean)[0];
    if (first) return Number(first);
  }
  return undefined;
}
const lsn = async () => parseLsn((await sql<{ l: string }[]>`select pg_current_wal_lsn()::text as l`)[0]!.l);
async function until(what: string, probe: () => Promise<boolean>) {
  for (let i = 0; i < 1200; i++) {
    if (await probe()) return;
    await Bun.sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}
/** The receiver has flushed everything the server wrote so far. */
const caughtUp = (app: string) =>
  until(`${app} to catch up`, async () => {
    const [r] = await sql<{ ok: boolean }[]>`select flush_lsn >= pg_current_wal_lsn() as ok
      from pg_stat_replication where application_name = ${app} and state = 'streaming'`;
    return r?.ok === true;
  });
/** Only the segment being received is left in the spool: every finished one is archived. */
const drained = (spool: string) =>
  until("the spool to drain", async () =>
    (await readdir(spool).catch(() => [] as string[])).every((n) => n.endsWith(".partial")),
  );

/** user+system CPU of a process and of its children it has waited for (backends that have exited), in ms. */
async function cpuWithChildrenMs(pid: number): Promise<number> {
  const stat = await Bun.file(`/proc/${pid}/stat`).text();
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * 1000) / TICKS;
}
/** All the server's CPU so far: the postmaster, every process it runs now, and those it has reaped. */
async function serverCpuMs(): Promise<number> {
  const postmaster = Number((await Bun.file(join(cluster.dataDir, "postmaster.pid")).text()).split("\n")[0]);
  const kids = await Bun.file(`/proc/${postmaster}/task/${postmaster}/children`).text();
  const live = await Promise.all(
    kids
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map((k) => cpuMs(Number(k))),
  );
  return (await cpuWithChildrenMs(postmaster)) + live.reduce((a, b) => a + b, 0);
}

type Bench = { tps: number; txns: number; cpuMs: number };
/** pgbench (after a checkpoint with `--checkpoint`), with the CPU the server and pgbench spent on it. */
async function pgbench(): Promise<Bench> {
  if (checkpoints) await sql`checkpoint`;
  const s0 = await serverCpuMs();
  const p = Bun.spawn(["pgbench", "-n", "-c", "4", "-j", "2", "-T", String(seconds)], {
    env: { ...process.env, ...pgEnv },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`pgbench exited ${code}: ${err.slice(-500)}`);
  const own = p.resourceUsage()!.cpuTime;
  return {
    tps: Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN),
    txns: Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1] ?? NaN),
    cpuMs: (await serverCpuMs()) - s0 + Number(own.user + own.system) / 1000,
  };
}

type Sample = {
  tps: number;
  /** CPU per transaction: the server's, pgbench's, and the receiver's and service's when they run. */
  cpuPerTxMs: number;
  walMiB: number;
  receiverMs?: number;
  serviceMs?: number;
  walsenderMs?: number;
  lagP99Ms?: number;
};
/** The server's process that streams to `app` (its CPU is the primary's share of the archive's cost). */
const walsender = async (app: string) =>
  (await sql<{ pid: number }[]>`select pid from pg_stat_replication where application_name = ${app}`)[0]?.pid;

/**
 * The server's own measure of the receiver's flush lag (pg_stat_replication.flush_lag: from a
 * local flush to the receiver's report of having flushed it), every 100 ms while `work` runs:
 * cheap enough not to load the machine it measures.
 */
async function withLag<T>(app: string, work: () => Promise<T>): Promise<[T, number]> {
  const lags: number[] = [];
  let stop = false;
  const poll = (async () => {
    while (!stop) {
      const [r] = await sql<{ ms: number | null }[]>`select extract(epoch from flush_lag) * 1000 as ms
        from pg_stat_replication where application_name = ${app}`;
      if (r?.ms != null) lags.push(Number(r.ms));
      await Bun.sleep(100);
    }
  })();
  const out = await work();
  stop = true;
  await poll;
  const s = lags.sort((a, b) => a - b);
  return [out, s[Math.min(s.length - 1, Math.floor(0.99 * s.length))] ?? NaN];
}

async function run(mode: Mode): Promise<Sample> {
  if (mode === "off") {
    const from = await lsn();
    const b = await pgbench();
    return { tps: b.tps, cpuPerTxMs: b.cpuMs / b.txns, walMiB: Number((await lsn()) - from) / 1048576 };
  }
  if (mode.startsWith("bare")) {
    const dir = join(work, "bare");
    await mkdir(dir, { recursive: true });
    const app = "bench_bare";
    const p = Bun.spawn(
      ["pg_receivewal", "-D", dir, "--slot", "bench_bare", "--synchronous", "--status-interval=1", "--no-password"],
      { env: { ...process.env, ...pgEnv, PGAPPNAME: app }, stdout: "ignore", stderr: "ignore" },
    );
    setPriority(p.pid, Number(/-n(\d+)$/.exec(mode)?.[1] ?? 0));
    await caughtUp(app);
    const sender = await walsender(app);
    const [from, c0, w0] = [await lsn(), await cpuMs(p.pid), await cpuMs(sender)];
    const [b, lagP99Ms] = await withLag(app, pgbench);
    const to = await lsn();
    await caughtUp(app);
    const receiverMs = (await cpuMs(p.pid)) - c0;
    const walsenderMs = (await cpuMs(sender)) - w0;
    p.kill("SIGINT");
    await p.exited;
    // Finished segments would pile up: bare pg_receivewal keeps every one.
    for (const n of await readdir(dir)) if (!n.endsWith(".partial")) await Bun.file(join(dir, n)).delete();
    return {
      tps: b.tps,
      cpuPerTxMs: (b.cpuMs + receiverMs) / b.txns,
      walMiB: Number(to - from) / 1048576,
      receiverMs,
      walsenderMs,
      lagP99Ms,
    };
  }
  const backupDir = join(work, mode);
  const spool = join(backupDir, "wal", "spool");
  const proc = Bun.spawn([mode === "before" ? beforeBin : bin, "backup-service"], {
    env: {
      PATH: process.env.PATH!,
      DATABASE_URL: url,
      BACKUP_DIR: backupDir,
      WAL_ARCHIVE: "stream",
      WAL_SLOT: `bench_${mode.replace(/\W/g, "_")}`,
      WAL_SYNC: String(mode !== "async"),
      ...(/-n\d+$/.test(mode) ? { WAL_RECEIVER_NICE: /-n(\d+)$/.exec(mode)![1]! } : {}),
      BACKUP_SCHEDULE: "0 0 1 1 *",
      BASE_BACKUP_SCHEDULE: "0 0 1 1 *",
    },
    stdout: "ignore",
    stderr: "ignore",
  });
  try {
    // Without WAL_SYNC the receiver reports a flush only at segment ends: wait for streaming alone.
    if (mode !== "async") await caughtUp(RECEIVER_APP_NAME);
    else
      await until(
        "streaming",
        async () =>
          (await sql`select 1 from pg_stat_replication where application_name = ${RECEIVER_APP_NAME}`).length > 0,
      );
    await drained(spool);
    const receiver = await childOf(proc.pid);
    const sender = await walsender(RECEIVER_APP_NAME);
    const [from, r0, s0, w0] = [await lsn(), await cpuMs(receiver), await cpuMs(proc.pid), await cpuMs(sender)];
    const [b, lagP99Ms] = await withLag(RECEIVER_APP_NAME, pgbench);
    const to = await lsn();
    if (mode !== "async") await caughtUp(RECEIVER_APP_NAME);
    await drained(spool);
    const [r1, s1, w1] = [await cpuMs(receiver), await cpuMs(proc.pid), await cpuMs(sender)];
    return {
      tps: b.tps,
      cpuPerTxMs: (b.cpuMs + r1 - r0 + s1 - s0) / b.txns,
      walMiB: Number(to - from) / 1048576,
      receiverMs: r1 - r0,
      serviceMs: s1 - s0,
      walsenderMs: w1 - w0,
      lagP99Ms,
    };
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
  }
}

const samples: Record<string, Sample[]> = Object.fromEntries(modes.map((m) => [m, []]));
const ratios: Record<string, number[]> = Object.fromEntries(modes.map((m) => [m, []]));
/** Per round: `off`'s CPU per transaction over this mode's, the share of TPS a CPU-bound host keeps. */
const cpuRatios: Record<string, number[]> = Object.fromEntries(modes.map((m) => [m, []]));
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const f = (x: number | undefined, d = 0) => (x === undefined || Number.isNaN(x) ? "-" : x.toFixed(d));
try {
  for (let r = 0; r < rounds; r++) {
    const order = modes.map((_, i) => modes[(i + r) % modes.length]!);
    const got: Record<string, Sample> = {};
    for (const m of order) {
      const s = await run(m);
      got[m] = s;
      samples[m]!.push(s);
      console.log(
        `round ${r + 1} ${m.padEnd(8)} tps ${f(s.tps).padStart(6)}  cpu/tx ${f(s.cpuPerTxMs, 3)} ms` +
          `  wal ${f(s.walMiB, 1).padStart(6)} MiB` +
          `  receiver ${f(s.receiverMs && s.receiverMs / s.walMiB, 1).padStart(6)} ms/MiB` +
          `  service ${f(s.serviceMs && s.serviceMs / s.walMiB, 1).padStart(6)} ms/MiB` +
          `  walsender ${f(s.walsenderMs && s.walsenderMs / s.walMiB, 1).padStart(6)} ms/MiB` +
          `  lag p99 ${f(s.lagP99Ms)} ms`,
      );
    }
    if (got.off)
      for (const m of modes) {
        ratios[m]!.push(got[m]!.tps / got.off.tps);
        cpuRatios[m]!.push(got.off.cpuPerTxMs / got[m]!.cpuPerTxMs);
      }
  }
  const summary = modes.map((m) => {
    const xs = samples[m]!;
    // Over all rounds together: a round writes about one segment, and the service seals whole ones.
    const per = (k: "receiverMs" | "serviceMs" | "walsenderMs") =>
      xs[0]?.[k] === undefined ? undefined : sum(xs.map((s) => s[k]!)) / sum(xs.map((s) => s.walMiB));
    return {
      mode: m,
      tps: median(xs.map((s) => s.tps)),
      ratioToOff: ratios[m]!.length ? median(ratios[m]!) : undefined,
      ratiosToOff: ratios[m],
      cpuPerTxMs: median(xs.map((s) => s.cpuPerTxMs)),
      cpuRatioToOff: cpuRatios[m]!.length ? median(cpuRatios[m]!) : undefined,
      cpuRatiosToOff: cpuRatios[m],
      walMiBPerRun: median(xs.map((s) => s.walMiB)),
      receiverCpuMsPerMiB: per("receiverMs"),
      serviceCpuMsPerMiB: per("serviceMs"),
      walsenderCpuMsPerMiB: per("walsenderMs"),
      lagP99Ms: xs[0]?.lagP99Ms === undefined ? undefined : median(xs.map((s) => s.lagP99Ms!)),
    };
  });
  console.log(
    "\nmedians over rounds (x off: each round's TPS over that round's `off`; cpu x off: `off`'s CPU per" +
      " transaction over this mode's); CPU per MiB over all rounds",
  );
  for (const s of summary)
    console.log(
      `${s.mode.padEnd(8)} tps ${f(s.tps).padStart(6)}  x off ${f(s.ratioToOff, 3).padStart(6)}` +
        `  cpu/tx ${f(s.cpuPerTxMs, 3)} ms  cpu x off ${f(s.cpuRatioToOff, 3)}` +
        `  receiver ${f(s.receiverCpuMsPerMiB, 1).padStart(6)} ms/MiB` +
        `  service ${f(s.serviceCpuMsPerMiB, 1).padStart(6)} ms/MiB` +
        `  walsender ${f(s.walsenderCpuMsPerMiB, 1).padStart(6)} ms/MiB  lag p99 ${f(s.lagP99Ms)} ms`,
    );
  await writeResults(
    join(import.meta.dir, "wal-cost-results.json"),
    JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: `${cpus().length} × ${cpus()[0]?.model}`,
        rounds,
        seconds,
        scale,
        summary,
        samples,
      },
      null,
      2,
    ) + "\n",
  );
} finally {
  await sql.end({ timeout: 1 });
  await admin.end({ timeout: 1 });
  await cluster.stop();
  await Bun.$`rm -rf ${work}`.quiet().nothrow();
}
