/**
 * `bun run bench:pitr`: the continuous archive against bare PostgreSQL tools, in one run on a
 * cluster of its own (fsync on, as in production), so the ratios hold however noisy the machine.
 *   --seconds 10   length of each pgbench phase     --scale 10   pgbench scale (about 15 MiB each)
 * Writes test/bench/pitr-results.json. Its TPS on/off is one run of each: on a shared machine
 * `bun run bench:wal-cost` (interleaved rounds, medians, CPU per transaction and per MiB) is the steadier figure.
 */
import { mkdir } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { startCluster } from "../support/cluster.ts";
import {
  arg,
  benchDatabase,
  type BenchRow,
  buildShinkei,
  fmtMiB,
  fmtMs,
  noSlower,
  rowLine,
  shinkeiBin as bin,
  timed,
  writeResults,
} from "./tools.ts";
import { parseLsn } from "../../src/wal/segments.ts";
import { RECEIVER_APP_NAME } from "../../src/wal/receiver.ts";

const seconds = Number(arg("seconds", "10"));
const scale = Number(arg("scale", "10"));
const work = join(tmpdir(), `shinkei-bench-pitr-${process.pid}`);
await mkdir(work, { recursive: true });

await buildShinkei();
const cluster = await startCluster({ walSegmentMiB: 16, settings: { fsync: "on", synchronous_commit: "on" } });
const { admin, url, sql, pgEnv } = await benchDatabase(cluster);
await timed(["pgbench", "-i", "-q", "-s", String(scale)], { env: pgEnv });

type Row = Omit<BenchRow, "group">;
const rows: Row[] = [];
const add = (r: Row) => {
  rows.push(r);
  console.log(rowLine(r, 52, 16));
};
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};

async function pgbench(): Promise<number> {
  const r = await timed(["pgbench", "-n", "-c", "4", "-j", "2", "-T", String(seconds)], { env: pgEnv });
  return Number(/tps = ([\d.]+)/.exec(r.stdout)?.[1] ?? NaN);
}

/**
 * Receiver lag while pgbench writes: every few ms, the server's current position and the
 * receiver's flushed one; the lag of a sample is how long until the receiver had flushed
 * everything the server had written at that moment.
 */
async function withLag(appName: string): Promise<{ tps: number; lags: number[] }> {
  const samples: { t: number; cur: bigint; flush: bigint }[] = [];
  let stop = false;
  const poll = (async () => {
    while (!stop) {
      const [r] = await sql<
        { cur: string; flush: string | null }[]
      >`select pg_current_wal_lsn()::text as cur, (select flush_lsn::text from pg_stat_replication
        where application_name = ${appName}) as flush`;
      if (r?.flush) samples.push({ t: performance.now(), cur: parseLsn(r.cur), flush: parseLsn(r.flush) });
      await Bun.sleep(2);
    }
  })();
  const tps = await pgbench();
  stop = true;
  await poll;
  const lags: number[] = [];
  for (let i = 0, j = 0; i < samples.length; i++) {
    j = Math.max(j, i);
    while (j < samples.length && samples[j]!.flush < samples[i]!.cur) j++;
    if (j < samples.length) lags.push(samples[j]!.t - samples[i]!.t);
  }
  return { tps, lags };
}

async function until(probe: () => Promise<boolean>) {
  for (let i = 0; i < 600 && !(await probe()); i++) await Bun.sleep(50);
}
const streaming = (app: string) =>
  until(
    async () =>
      (await sql`select 1 from pg_stat_replication where application_name = ${app} and state = 'streaming'`).length > 0,
  );

try {
  // 1. No receiver: the primary's own rate.
  const tpsOff = await pgbench();

  // 2. shinkei's backup service streaming (WAL_SYNC on, the default; then off), its peak memory sampled.
  async function service(sync: boolean) {
    const proc = Bun.spawn([bin, "backup-service"], {
      env: {
        PATH: process.env.PATH!,
        DATABASE_URL: url,
        BACKUP_DIR: join(work, `ours-${sync}`),
        WAL_ARCHIVE: "stream",
        WAL_SLOT: "bench_ours",
        WAL_SYNC: String(sync),
        BACKUP_SCHEDULE: "0 0 1 1 *",
        BASE_BACKUP_SCHEDULE: "0 0 1 1 *",
      },
      stdout: "ignore",
      stderr: "inherit",
    });
    let peakKb = 0;
    const rss = setInterval(async () => {
      const status = await Bun.file(`/proc/${proc.pid}/status`)
        .text()
        .catch(() => "");
      peakKb = Math.max(peakKb, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0));
    }, 100);
    await streaming(RECEIVER_APP_NAME);
    const result = await withLag(RECEIVER_APP_NAME);
    clearInterval(rss);
    proc.kill("SIGTERM");
    await proc.exited;
    return { ...result, peakKb };
  }
  const ours = await service(true);
  const oursAsync = await service(false);
  const peakKb = Math.max(ours.peakKb, oursAsync.peakKb);

  // 3. Bare pg_receivewal --synchronous, same load.
  const bareDir = join(work, "bare");
  await mkdir(bareDir);
  await sql`select pg_create_physical_replication_slot('bench_bare', true)`;
  const bare = Bun.spawn(
    ["pg_receivewal", "-D", bareDir, "--slot", "bench_bare", "--synchronous", "--status-interval=1", "--no-password"],
    {
      env: { ...process.env, ...pgEnv, PGAPPNAME: "bench_bare" },
      stdout: "ignore",
      stderr: "ignore",
    },
  );
  await streaming("bench_bare");
  const base = await withLag("bench_bare");
  bare.kill("SIGINT");
  await bare.exited;

  // 1 again: the primary alone after the same amount of writing, so the order of phases does not decide the ratio.
  const tpsOffAfter = await pgbench();
  const tpsOffMean = (tpsOff + tpsOffAfter) / 2;

  add({
    name: "receiver lag p50 under pgbench: ours vs bare pg_receivewal",
    ours: fmtMs(pct(ours.lags, 50)),
    baseline: fmtMs(pct(base.lags, 50)),
    ratio: pct(ours.lags, 50) / pct(base.lags, 50),
    goal: "",
    met: null,
    raw: { oursMs: pct(ours.lags, 50), baselineMs: pct(base.lags, 50), samples: ours.lags.length },
  });
  add({
    name: "receiver lag p99 under pgbench: ours vs bare pg_receivewal",
    ours: fmtMs(pct(ours.lags, 99)),
    baseline: fmtMs(pct(base.lags, 99)),
    ratio: pct(ours.lags, 99) / pct(base.lags, 99),
    goal: "< 200 ms",
    met: pct(ours.lags, 99) < 200,
    raw: { oursMs: pct(ours.lags, 99), baselineMs: pct(base.lags, 99) },
  });
  add({
    name: "pgbench TPS: streaming on (ours) vs off (before/after mean)",
    ours: ours.tps.toFixed(0),
    baseline: tpsOffMean.toFixed(0),
    ratio: ours.tps / tpsOffMean,
    goal: "≥ 0.95x",
    met: ours.tps / tpsOffMean >= 0.95,
    raw: { on: ours.tps, offBefore: tpsOff, offAfter: tpsOffAfter },
  });
  add({
    name: "pgbench TPS: ours vs bare pg_receivewal --synchronous",
    ours: ours.tps.toFixed(0),
    baseline: base.tps.toFixed(0),
    ratio: ours.tps / base.tps,
    goal: "≥ 0.95x",
    met: ours.tps / base.tps >= 0.95,
    raw: { ours: ours.tps, bare: base.tps },
  });
  add({
    name: "pgbench TPS: ours with WAL_SYNC=false vs off",
    ours: oursAsync.tps.toFixed(0),
    baseline: tpsOffMean.toFixed(0),
    ratio: oursAsync.tps / tpsOffMean,
    goal: "",
    met: null,
    raw: { on: oursAsync.tps, off: tpsOffMean },
  });
  // Without --synchronous the receiver flushes (and reports) only at segment ends: no lag to sample.
  add({
    name: "receiver lag p99 with WAL_SYNC=false",
    ours: oursAsync.lags.length ? fmtMs(pct(oursAsync.lags, 99)) : "per segment",
    baseline: "",
    ratio: null,
    goal: "",
    met: null,
    raw: { samples: oursAsync.lags.length },
  });
  add({
    name: "peak RSS of backup-service while streaming",
    ours: fmtMiB(peakKb * 1024),
    baseline: "",
    ratio: null,
    goal: "< 150 MiB",
    met: peakKb * 1024 < 150 * 1048576,
    raw: { bytes: peakKb * 1024 },
  });

  // 4. Base backup: ours (stdout tar, gzip + SHA-256 on our side) vs bare pg_basebackup -Ft -z to a folder.
  const oursMs: number[] = [],
    bareMs: number[] = [];
  for (let i = 0; i < 3; i++) {
    oursMs.push(
      (await timed([bin, "backup", "base"], { env: { DATABASE_URL: url, BACKUP_DIR: join(work, `base-${i}`) } })).ms,
    );
    bareMs.push(
      (
        await timed(
          ["pg_basebackup", "-D", join(work, `bare-base-${i}`), "-Ft", "-z", "-X", "none", "-c", "fast", "--no-sync"],
          { env: pgEnv },
        )
      ).ms,
    );
  }
  add(noSlower(`base backup (scale ${scale}): ours vs pg_basebackup -Ft -z`, oursMs, bareMs));

  await writeResults(
    join(import.meta.dir, "pitr-results.json"),
    JSON.stringify(
      { date: new Date().toISOString(), machine: `${cpus().length} × ${cpus()[0]?.model}`, seconds, scale, rows },
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
