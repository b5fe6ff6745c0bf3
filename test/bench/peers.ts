/**
 * `bun run bench:peers`: shinkei next to pgBackRest and Barman (when installed) and the bare
 * PostgreSQL tools, on one cluster of its own (fsync on, synchronous_commit on), rounds
 * interleaved, medians:
 *   1. base/full backup: time and size
 *   2. pgbench -N TPS with each one's WAL archiving on, over the same with archiving off
 *      (and the CPU our archive path spends per MiB of WAL: receiver, then seal)
 *   3. restore to a moment: from the command until the server answers, with exact data
 *   4. acknowledged commits lost when the primary is killed (kill -9) under a load that records
 *      every acknowledged insert and its data directory is lost, recovered to latest by each
 *   --scale 5   pgbench scale (about 15 MiB each)     --rounds 3   interleaved rounds
 *   --seconds 10   each pgbench TPS phase           --loss-seconds 5   the load before the kill
 *   --deadline 900   seconds any one command or wait may take before the bench fails, naming it
 * Each peer's exact configuration is written beside the results (peers-results.json).
 * A peer that is not installed is skipped, saying so.
 */
import { chmod, chown, mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { startCluster } from "../support/cluster.ts";
import { arg, fmtMs, median, smoke, timed as timedOnce, writeResults } from "./tools.ts";
import { freePort, runAs } from "../../src/pg/localdb.ts";
import { parseLsn } from "../../src/wal/segments.ts";
import { RECEIVER_APP_NAME } from "../../src/wal/receiver.ts";
import { listBaseBackups } from "../../src/wal/base.ts";

const scale = Number(arg("scale", "5"));
const rounds = Number(arg("rounds", "3"));
const seconds = Number(arg("seconds", "10"));
const lossSeconds = Number(arg("loss-seconds", "5"));
const deadlineMs = Number(arg("deadline", "900")) * 1000;
/** Every command here has a deadline: one that hangs fails the bench, naming itself. */
const timed: typeof timedOnce = (cmd, options = {}) => timedOnce(cmd, { timeoutMs: deadlineMs, ...options });
const root = join(import.meta.dir, "..", "..");
const bin = join(root, "dist", "shinkei");
const work = join("/tmp", `shinkei-bench-peers-${process.pid}`);
const as = await runAs();
const asServer = (cmd: string[]) => [...as.prefix, ...cmd];

// Restored servers stop under our clients on purpose or by design (a recovery ending in FATAL, an
// immediate stop): a connection reset then, while postgres.js closes it, reaches Bun's socket after
// postgres.js removed its listeners and surfaces as an uncaught error, or as a rejection nobody
// awaits (Bun prints those, runs on and exits 1 at the end). Expected here, so said and passed
// over; any other uncaught error or unhandled rejection still ends the bench.
function serverStopped(e: unknown) {
  const code = (e as { code?: string } | null)?.code;
  if (code === "ECONNRESET" || code === "EPIPE")
    return console.log(`a server reset a connection as it stopped (${(e as Error).message})`);
  console.error(e);
  process.exit(1);
}
process.on("uncaughtException", serverStopped);
process.on("unhandledRejection", serverStopped);

const skipped: string[] = [];
const has = (tool: string) => Bun.which(tool) !== null;
const pgbackrestOn = has("pgbackrest");
const barmanOn = has("barman");
if (!pgbackrestOn) skipped.push("pgBackRest: `pgbackrest` is not on PATH (apt-get install pgbackrest)");
if (!barmanOn) skipped.push("Barman: `barman` is not on PATH (apt-get install barman)");
for (const s of skipped) console.log(`skipped ${s}`);

/** Folders the server's OS user must own: the peers run as it, as they would in production. */
async function serverDir(path: string) {
  await mkdir(path, { recursive: true, mode: 0o700 });
  if (as.uid !== undefined) await chown(path, as.uid, as.gid!);
}
await mkdir(work, { recursive: true });
await chmod(work, 0o755);
const scratch = join(work, "tmp");
await mkdir(scratch, { recursive: true });
await chmod(scratch, 0o755);
const sock = join(work, "sock");
await serverDir(sock);
await chmod(sock, 0o755);

await timed(["bun", "run", "build"], { cwd: root });
const cluster = await startCluster({
  // PostgreSQL's default segment size, as users run it (test clusters use 1 MiB).
  walSegmentMiB: 16,
  settings: {
    fsync: "on",
    synchronous_commit: "on",
    archive_mode: "on",
    archive_command: "true",
    shared_buffers: "128MB",
    max_slot_wal_keep_size: "8GB",
  },
});
// pgBackRest reaches the server only through its unix socket: give it one, in our folder.
const restarted = await cluster.run("pg_ctl", [
  "-D",
  cluster.dataDir,
  "restart",
  "-w",
  "-m",
  "fast",
  "-l",
  join(cluster.dataDir, "server.log"),
  "-o",
  `-c listen_addresses=127.0.0.1 -c port=${cluster.port} -c unix_socket_directories=${sock}`,
]);
if (restarted.code !== 0) throw new Error(`restart with a socket failed: ${restarted.output}`);
const url = cluster.url("bench");
const admin = postgres(cluster.url(), { max: 1, onnotice: () => {} });
await admin`create database bench`;
const sql = postgres(url, { max: 2, onnotice: () => {} });
const pgEnv = { PGHOST: "127.0.0.1", PGPORT: String(cluster.port), PGUSER: "postgres", PGDATABASE: "bench" };

// --- the peers' own configuration, in our folder, passed on their command lines ---
const pbrDir = join(work, "pgbackrest");
const pbrConf = join(pbrDir, "pgbackrest.conf");
const pbrConfig = [
  "[global]",
  `repo1-path=${pbrDir}/repo`,
  `log-path=${pbrDir}/log`,
  `lock-path=${pbrDir}/lock`,
  `spool-path=${pbrDir}/spool`,
  "compress-type=gz",
  "compress-level=6",
  "process-max=2",
  "start-fast=y",
  "archive-async=n",
  "repo1-retention-full=9999",
  "log-level-console=warn",
  "log-level-file=off",
  "",
  "[bench]",
  `pg1-path=${cluster.dataDir}`,
  `pg1-port=${cluster.port}`,
  `pg1-socket-path=${sock}`,
  "pg1-user=postgres",
  "",
].join("\n");
// An include folder of our own too: otherwise pgBackRest also reads the machine's /etc/pgbackrest/conf.d.
const pbrInclude = join(pbrDir, "conf.d");
const pbrOptions = `--config=${pbrConf} --config-include-path=${pbrInclude} --stanza=bench`;
const pbr = (args: string[]) => asServer(["pgbackrest", ...pbrOptions.split(" "), ...args]);
const pbrArchive = `pgbackrest ${pbrOptions} archive-push %p`;

const bmDir = join(work, "barman");
const bmConf = join(bmDir, "barman.conf");
const bmConfig = [
  "[barman]",
  `barman_home = ${bmDir}/home`,
  "barman_user = postgres",
  `log_file = ${bmDir}/barman.log`,
  "log_level = WARNING",
  `barman_lock_directory = ${bmDir}/lock`,
  "",
  "[bench]",
  "description = shinkei peers bench",
  `conninfo = host=127.0.0.1 port=${cluster.port} user=postgres dbname=postgres`,
  `streaming_conninfo = host=127.0.0.1 port=${cluster.port} user=postgres`,
  "backup_method = postgres",
  "immediate_checkpoint = true",
  "streaming_archiver = on",
  "archiver = off",
  "slot_name = barman_bench",
  `path_prefix = ${cluster.bin}`,
  "",
].join("\n");
const bm = (args: string[]) => asServer(["barman", "-c", bmConf, "-q", ...args]);

const oursDir = join(work, "shinkei");
const oursEnv = (dir: string, slot: string) => ({
  DATABASE_URL: url,
  BACKUP_DIR: dir,
  WAL_ARCHIVE: "stream",
  WAL_SLOT: slot,
  WAL_SYNC: "true",
  BACKUP_SCHEDULE: "0 0 1 1 *",
  BASE_BACKUP_SCHEDULE: "0 0 1 1 *",
  PITR_DRILL_SCHEDULE: "0 0 1 1 *",
  TMPDIR: scratch,
});
const configuration = {
  cluster: {
    version: "PostgreSQL " + (await admin`show server_version`)[0]!.server_version,
    fsync: "on",
    synchronous_commit: "on",
    shared_buffers: "128MB",
    archive_mode: "on",
    "archive_command when off": "true (a no-op)",
  },
  shinkei: {
    env: { ...oursEnv("<work>/shinkei", "shinkei_bench"), DATABASE_URL: "<cluster>", TMPDIR: "<work>/tmp" },
    base: "shinkei backup base (pg_basebackup tar on stdout, zstd + SHA-256 ours, in one read)",
    restore: "shinkei pitr restore --to TIME",
  },
  pgbackrest: pgbackrestOn
    ? {
        version: (await timed(["pgbackrest", "version"])).stdout.trim(),
        conf: pbrConfig.replaceAll(work, "<work>"),
        archive_command: pbrArchive.replaceAll(work, "<work>"),
        backup: "pgbackrest backup --type=full",
        restore:
          "pgbackrest restore --type=time --target=TIME --target-action=promote --pg1-path=NEW, then pg_ctl start",
      }
    : "skipped",
  barman: barmanOn
    ? {
        version: (await timed(["barman", "--version"])).stdout.trim().split("\n")[0],
        conf: bmConfig.replaceAll(work, "<work>"),
        archiving: "barman receive-wal (pg_receivewal, asynchronous: not in synchronous_standby_names)",
        backup: "barman backup (pg_basebackup, uncompressed: backup_compression not set)",
        restore: "barman archive-wal; barman recover --target-time TIME --target-action promote NEW, then pg_ctl start",
        latest:
          "barman recover; then, by hand, recovery.signal and " +
          "restore_command = 'barman -c CONF get-wal -P bench %f > %p' so the streamed .partial is replayed " +
          "(its own restore_command copies only whole segments)",
      }
    : "skipped",
  floor: { backup: "pg_basebackup -Ft -z -X none -c fast --no-sync", archiving: "none" },
};
console.log(JSON.stringify(configuration, null, 2).replaceAll(work, "<work>"));

type Row = {
  measurement: string;
  shinkei: string;
  pgbackrest: string;
  barman: string;
  floor: string;
  raw: Record<string, unknown>;
};
const rows: Row[] = [];
const add = (r: Row) => {
  rows.push(r);
  console.log(
    [r.measurement.padEnd(44), r.shinkei.padEnd(22), r.pgbackrest.padEnd(22), r.barman.padEnd(22), r.floor].join(" | "),
  );
};
const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
async function du(path: string): Promise<number> {
  if (!(await stat(path).catch(() => null))) return 0;
  const r = await timed(["du", "-sb", path]);
  return Number(r.stdout.split(/\s/)[0]);
}
async function lsn(): Promise<bigint> {
  return parseLsn((await sql`select pg_current_wal_lsn()::text as l`)[0]!.l);
}
/** Poll `probe` until it holds; past `ms` (a probe that hangs included), fail naming the wait. */
async function until(what: string, probe: () => Promise<boolean>, ms = 120_000) {
  const end = Date.now() + ms;
  for (;;) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((done) => (timer = setTimeout(() => done("late"), Math.max(0, end - Date.now()))));
    const ok = await Promise.race([probe(), late]).finally(() => clearTimeout(timer));
    if (ok === true) return;
    if (ok === "late" || Date.now() > end) throw new Error(`timed out after ${ms / 1000} s waiting for ${what}`);
    await Bun.sleep(100);
  }
}
/** Wait for a child process to end, at most `ms`; then SIGKILL it and fail, naming it. */
async function exitOf(proc: ReturnType<typeof Bun.spawn>, what: string, ms = 60_000) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((done) => (timer = setTimeout(() => done("late"), ms)));
  const r = await Promise.race([proc.exited, late]).finally(() => clearTimeout(timer));
  if (r === "late") {
    proc.kill("SIGKILL");
    throw new Error(`${what} did not exit within ${ms / 1000} s (killed)`);
  }
}
/** A receiver named `app` streaming and flushed up to where the server is now. */
async function caughtUp(app: string) {
  const at = await lsn();
  await until(`${app} to catch up`, async () => {
    const [r] = await sql<
      { f: string | null }[]
    >`select flush_lsn::text as f from pg_stat_replication where application_name = ${app} and state = 'streaming'`;
    return !!r?.f && parseLsn(r.f) >= at;
  });
}
async function setArchiveCommand(command: string) {
  await admin.unsafe(`alter system set archive_command = '${command.replace(/'/g, "''")}'`);
  await admin`select pg_reload_conf()`;
  await Bun.sleep(300);
}
async function pgbench(): Promise<number> {
  const r = await timed(["pgbench", "-n", "-N", "-c", "4", "-j", "2", "-T", String(seconds)], { env: pgEnv });
  return Number(/tps = ([\d.]+)/.exec(r.stdout)?.[1] ?? NaN);
}
/** CPU seconds (user + system) of a process so far, from /proc. */
async function cpuOf(pid: number): Promise<number> {
  const s = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}
async function childrenOf(pid: number): Promise<number[]> {
  const r = Bun.spawnSync(["ps", "-o", "pid=", "--ppid", String(pid)]);
  return r.stdout
    .toString()
    .split("\n")
    .map((l) => Number(l.trim()))
    .filter((n) => n > 0);
}

type Service = { proc: ReturnType<typeof Bun.spawn>; stop(): Promise<void> };
function startOurs(dir: string, slot: string): Service {
  const proc = Bun.spawn([bin, "backup-service"], {
    env: { PATH: process.env.PATH!, ...oursEnv(dir, slot) },
    stdout: "ignore",
    stderr: "ignore",
  });
  return {
    proc,
    stop: async () => {
      proc.kill("SIGTERM");
      await exitOf(proc, "shinkei backup-service (SIGTERM)");
    },
  };
}
let barmanReceiver: ReturnType<typeof Bun.spawn> | null = null;
async function startBarman() {
  const proc = Bun.spawn(bm(["receive-wal", "bench"]), { stdout: "pipe", stderr: "pipe" });
  barmanReceiver = proc;
  let exited = false;
  proc.exited.then(() => (exited = true));
  await until("barman's receiver", async () => {
    if (exited)
      throw new Error(
        `barman receive-wal exited: ${await new Response(proc.stdout).text()}${await new Response(proc.stderr).text()}`,
      );
    return (
      (
        await sql`select 1 from pg_stat_replication
          where application_name = 'barman_receive_wal' and state = 'streaming'`
      ).length > 0
    );
  });
  // Keep its pipes drained so a chatty receiver never blocks.
  void new Response(proc.stdout).text().catch(() => {});
  void new Response(proc.stderr).text().catch(() => {});
}
async function stopBarman() {
  if (!barmanReceiver) return;
  await timed(bm(["receive-wal", "--stop", "bench"])).catch(() => {});
  const proc = barmanReceiver;
  barmanReceiver = null;
  await exitOf(proc, "barman receive-wal (after receive-wal --stop)");
}

const restoredServers: string[] = [];
/** A restored server to wait for: its port (or shinkei's URL for it), data directory and log. */
type Restored = { port: number | string; dataDir: string; log: string };
/** Start a restored data directory on a free port, its sockets in its own folder, archiving off. */
async function startRestored(dataDir: string): Promise<Restored> {
  const port = freePort();
  const sockDir = `${dataDir}.sock`;
  await serverDir(sockDir);
  restoredServers.push(dataDir);
  const r = await timed(
    asServer([
      join(cluster.bin, "pg_ctl"),
      "-D",
      dataDir,
      "start",
      "-w",
      "-t",
      String(deadlineMs / 1000),
      "-l",
      join(sockDir, "server.log"),
      "-o",
      `-c listen_addresses=127.0.0.1 -c port=${port} -c unix_socket_directories=${sockDir} -c archive_mode=off`,
    ]),
  ).catch(async (e: Error) => {
    throw new Error(
      `${e.message}\n${(await readFile(join(sockDir, "server.log"), "utf8").catch(() => "")).slice(-1500)}`,
    );
  });
  if (r.code !== 0) throw new Error(`could not start ${dataDir}`);
  return { port, dataDir, log: join(sockDir, "server.log") };
}
/**
 * Barman's own get-wal as restore_command of a data directory it recovered (with -P, also the
 * .partial its receiver was writing): `barman recover` copies the WAL it chose and reads no more.
 */
async function barmanGetWal(dataDir: string, options: { partial: boolean }) {
  const command = `barman -c ${bmConf} get-wal${options.partial ? " -P" : ""} bench %f > %p`;
  await timed(
    asServer([
      "sh",
      "-c",
      `printf "%s\\n" "restore_command = '${command}'" >> ${dataDir}/postgresql.auto.conf` +
        ` && touch ${dataDir}/recovery.signal`,
    ]),
  );
}
async function stopRestored(dataDir: string) {
  await timed(asServer([join(cluster.bin, "pg_ctl"), "-D", dataDir, "stop", "-m", "immediate", "-w"])).catch(() => {});
  await timed(["rm", "-rf", dataDir, `${dataDir}.sock`]);
}
/** Whether a server runs on the restored data directory (pg_ctl status: its postmaster.pid and process). */
async function running(r: Restored): Promise<boolean> {
  return timed(asServer([join(cluster.bin, "pg_ctl"), "-D", r.dataDir, "status"]), { timeoutMs: 30_000 }).then(
    () => true,
    () => false,
  );
}
/** Whether the server of `dataDir` runs, and the end of its log: why a restored server does not answer. */
async function serverReport(r: Restored): Promise<string> {
  const status = (await running(r)) ? "running" : "not running";
  const folder = (await stat(r.dataDir).catch(() => null)) ? "present" : "gone";
  const log = (await readFile(r.log, "utf8").catch((e: Error) => `(no log: ${e.message})`)).slice(-2000);
  return `server: ${status}; data directory ${r.dataDir}: ${folder}; end of its log:\n${log}`;
}
/** `p`, or a failure naming `what` once `ms` have passed without it settling. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms / 1000} s: ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
/**
 * Poll until the restored server answers as a primary (at most --deadline); then `read` on it.
 * Each attempt has a client of its own and a bound: postgres.js leaves a query pending for good
 * when the server closes the connection before the handshake ends (a server being stopped, or
 * whatever else took its port), and on a one-connection client every later query waits behind it.
 * Failing, it says what the last attempt got, whether the server runs and the end of its log.
 */
async function onPrimary<T>(r: Restored, what: string, read: (db: postgres.Sql) => Promise<T>): Promise<T> {
  const url = typeof r.port === "string" ? r.port : `postgres://postgres@127.0.0.1:${r.port}/bench`;
  const attempt = async <U>(f: (db: postgres.Sql) => Promise<U>, ms: number, doing: string): Promise<U> => {
    const db = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 5 });
    const q = f(db);
    q.catch(() => {}); // its late failure (the client ended under it) is no one's to handle
    try {
      return await within(q, ms, doing);
    } finally {
      void db.end({ timeout: 1 }).catch(() => {});
    }
  };
  let last = "no answer yet";
  let stopped = false;
  await until(
    what,
    async () => {
      const row = await attempt((db) => db`select pg_is_in_recovery() as r`, 10_000, "pg_is_in_recovery()").catch(
        (e: Error) => {
          last = e.message;
          return null;
        },
      );
      if (row?.[0]?.r) last = "still in recovery";
      // A server that stopped (pg_ctl start returns once it takes read-only connections; recovery
      // can still end in FATAL after that) never answers: say so now, not at the deadline.
      if (row === null && !(await running(r))) {
        stopped = true;
        throw new Error(`${what}: it stopped`);
      }
      return row !== null && !row[0]!.r;
    },
    deadlineMs,
  ).catch(async (e: Error) => {
    throw new Error(`${stopped ? e.message : `${e.message}; last attempt: ${last}`}; ${await serverReport(r)}`);
  });
  return attempt(read, deadlineMs, `${what}: reading it`);
}
/** The restored server's answer to `query` (one value, `v`), once it answers as a primary. */
const answer = (r: Restored, query: string) =>
  onPrimary(r, "the restored server to answer as a primary", async (db) => (await db.unsafe(query))[0]!.v as string);
/** shinkei's scratch instance, from `pitr restore --json`: its URL, and its folder for the report. */
const scratchOf = (out: { url: string; instance: string }): Restored => ({
  port: out.url,
  dataDir: join(out.instance, "data"),
  log: join(out.instance, "server.log"),
});

let ours: Service | null = null;
try {
  await timed(["pgbench", "-i", "-q", "-s", String(scale)], { env: pgEnv });
  await sql`create table acked (id bigint primary key)`;
  if (pgbackrestOn) {
    await serverDir(pbrDir);
    await serverDir(pbrInclude);
    await writeFile(pbrConf, pbrConfig);
    await chmod(pbrConf, 0o644);
    await timed(pbr(["stanza-create"]));
  }
  if (barmanOn) {
    for (const d of [bmDir, join(bmDir, "lock"), join(bmDir, "home")]) await serverDir(d);
    await writeFile(bmConf, bmConfig);
    await chmod(bmConf, 0o644);
    await timed(bm(["receive-wal", "--create-slot", "bench"]));
  }

  // ---- 2. pgbench -N TPS, archiving off / on, interleaved rounds ----
  type Kind = "off" | "shinkei" | "pgbackrest" | "barman";
  const kinds: Kind[] = [
    "off",
    "shinkei",
    ...(pgbackrestOn ? (["pgbackrest"] as const) : []),
    ...(barmanOn ? (["barman"] as const) : []),
  ];
  const tps: Record<Kind, number[]> = { off: [], shinkei: [], pgbackrest: [], barman: [] };
  const cpu: { walBytes: number; receiver: number; seal: number }[] = [];
  for (let round = 0; round < rounds; round++) {
    for (const kind of round % 2 ? [...kinds].reverse() : kinds) {
      if (kind === "off") tps.off.push(await pgbench());
      else if (kind === "shinkei") {
        // A fresh archive and slot each round: no backlog of the rounds between to seal.
        const slot = `bench_tps_${round}`;
        const s = startOurs(join(work, `tps-${round}`), slot);
        await until(
          "shinkei's receiver",
          async () =>
            (
              await sql`select 1 from pg_stat_replication
                where application_name = ${RECEIVER_APP_NAME} and state = 'streaming'`
            ).length > 0,
        );
        await Bun.sleep(3000); // past the service's start-up work, which is not per MiB of WAL
        const receiverPid = (await childrenOf(s.proc.pid))[0] ?? 0;
        const before = { wal: await lsn(), seal: await cpuOf(s.proc.pid), receiver: await cpuOf(receiverPid) };
        tps.shinkei.push(await pgbench());
        await caughtUp(RECEIVER_APP_NAME);
        await Bun.sleep(1500); // the last segments sealed
        cpu.push({
          walBytes: Number((await lsn()) - before.wal),
          receiver: (await cpuOf(receiverPid)) - before.receiver,
          seal: (await cpuOf(s.proc.pid)) - before.seal,
        });
        await s.stop();
        await sql`select pg_drop_replication_slot(${slot})`;
        await timed(["rm", "-rf", join(work, `tps-${round}`)]);
      } else if (kind === "pgbackrest") {
        await setArchiveCommand(pbrArchive);
        tps.pgbackrest.push(await pgbench());
        await setArchiveCommand("true");
      } else {
        await startBarman();
        await Bun.sleep(1000); // it reports its position only every few seconds: let it take the backlog
        tps.barman.push(await pgbench());
        await stopBarman();
      }
      console.log(`round ${round + 1}: ${kind} ${tps[kind].at(-1)!.toFixed(0)} TPS`);
    }
  }
  const off = median(tps.off);
  const ratio = (k: Kind) =>
    tps[k].length ? `${(median(tps[k]) / off).toFixed(2)}x (${median(tps[k]).toFixed(0)})` : "skipped";
  add({
    measurement: "pgbench -N TPS, archiving on / off",
    shinkei: ratio("shinkei"),
    pgbackrest: ratio("pgbackrest"),
    barman: ratio("barman"),
    floor: `1.00x (${off.toFixed(0)})`,
    raw: { tps },
  });
  const perMiB = (k: "receiver" | "seal") => median(cpu.map((c) => (c[k] * 1000) / (c.walBytes / 1048576)));
  add({
    measurement: "shinkei CPU per MiB of WAL: receiver / seal",
    shinkei: `${perMiB("receiver").toFixed(1)} ms / ${perMiB("seal").toFixed(1)} ms`,
    pgbackrest: "",
    barman: "",
    floor: "",
    raw: { cpu },
  });

  // Where the seal's time goes, on one real WAL segment: each step alone, in this process.
  {
    const walDir = join(cluster.dataDir, "pg_wal");
    const seg = (await readdir(walDir))
      .filter((n) => /^[0-9A-F]{24}$/.test(n))
      .sort()
      .at(-2)!;
    const bytes = new Uint8Array(await readFile(join(walDir, seg)));
    const time = (f: () => unknown) => {
      const xs: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t = performance.now();
        f();
        xs.push(performance.now() - t);
      }
      return median(xs) / (bytes.length / 1048576);
    };
    const steps = {
      gzip6: time(() => Bun.gzipSync(bytes, { level: 6 })),
      gzip1: time(() => Bun.gzipSync(bytes, { level: 1 })),
      zstd3: time(() => Bun.zstdCompressSync(bytes, { level: 3 })),
      sha256: time(() => new Bun.CryptoHasher("sha256").update(bytes).digest()),
      gunzip: (() => {
        const z = Bun.gzipSync(bytes, { level: 6 });
        return time(() => Bun.gunzipSync(z));
      })(),
      unzstd: (() => {
        const z = Bun.zstdCompressSync(bytes, { level: 3 });
        return time(() => Bun.zstdDecompressSync(z));
      })(),
    };
    const sizes = {
      gzip6: Bun.gzipSync(bytes, { level: 6 }).length,
      zstd3: Bun.zstdCompressSync(bytes, { level: 3 }).length,
    };
    add({
      measurement: "seal steps, ms per MiB of one WAL segment",
      shinkei: `gzip-6 ${steps.gzip6.toFixed(1)}, sha256 ${steps.sha256.toFixed(1)}`,
      pgbackrest: "",
      barman: "",
      floor: `zstd-3 ${steps.zstd3.toFixed(1)}, gzip-1 ${steps.gzip1.toFixed(1)}`,
      raw: { segment: seg, steps, sizes },
    });
  }

  // ---- 1. base/full backups: every archiver on, as in production; interleaved rounds ----
  ours = startOurs(oursDir, "shinkei_bench");
  await until(
    "shinkei's receiver",
    async () =>
      (
        await sql`select 1 from pg_stat_replication
          where application_name = ${RECEIVER_APP_NAME} and state = 'streaming'`
      ).length > 0,
  );
  if (pgbackrestOn) await setArchiveCommand(pbrArchive);
  if (barmanOn) {
    await startBarman();
    await timed(bm(["switch-wal", "--force", "--archive", "--archive-timeout", "60", "bench"]));
  }
  const backup = { shinkei: [] as number[], pgbackrest: [] as number[], barman: [] as number[], floor: [] as number[] };
  const size = { shinkei: 0, pgbackrest: 0, barman: 0, floor: 0 };
  for (let round = 0; round < rounds; round++) {
    const order = ["shinkei", "pgbackrest", "barman", "floor"] as const;
    for (const kind of round % 2 ? [...order].reverse() : order) {
      if (kind === "shinkei") {
        const t = await timed([bin, "backup", "base", "--json"], { env: oursEnv(oursDir, "shinkei_bench") });
        backup.shinkei.push(t.ms);
        size.shinkei = (await listBaseBackups(oursDir)).at(-1)!.sizeBytes;
      } else if (kind === "pgbackrest" && pgbackrestOn) {
        const before = await du(join(pbrDir, "repo", "backup"));
        backup.pgbackrest.push((await timed(pbr(["backup", "--type=full"]))).ms);
        size.pgbackrest = (await du(join(pbrDir, "repo", "backup"))) - before;
      } else if (kind === "barman" && barmanOn) {
        const before = await du(join(bmDir, "home", "bench", "base"));
        backup.barman.push((await timed(bm(["backup", "bench"]))).ms);
        size.barman = (await du(join(bmDir, "home", "bench", "base"))) - before;
      } else if (kind === "floor") {
        const dir = join(work, `floor-${round}`);
        backup.floor.push(
          (
            await timed(["pg_basebackup", "-D", dir, "-Ft", "-z", "-X", "none", "-c", "fast", "--no-sync"], {
              env: pgEnv,
            })
          ).ms,
        );
        size.floor = await du(dir);
        await timed(["rm", "-rf", dir]);
      }
    }
  }
  const fmtBackup = (k: keyof typeof backup) =>
    backup[k].length ? `${fmtMs(median(backup[k]))}, ${mib(size[k])}` : "skipped";
  add({
    measurement: `base/full backup (scale ${scale})`,
    shinkei: fmtBackup("shinkei"),
    pgbackrest: fmtBackup("pgbackrest"),
    barman: fmtBackup("barman"),
    floor: fmtBackup("floor"),
    raw: { ms: backup, bytes: size },
  });

  // ---- 3. restore to a moment ----
  // Writes, a pause in which the data is read and the moment taken, then more writes after it.
  const load = (s: number) => timed(["pgbench", "-n", "-N", "-c", "4", "-j", "2", "-T", String(s)], { env: pgEnv });
  await load(Math.max(2, Math.round(seconds / 2)));
  const digestQuery =
    "select (select sum(abalance) from pgbench_accounts)::text || '/' || (select count(*) from pgbench_history)" +
    " || '/' || coalesce((select sum(delta) from pgbench_history), 0) as v";
  const expected = (await sql.unsafe(digestQuery))[0]!.v as string;
  await Bun.sleep(500);
  const moment = new Date(Number((await sql`select extract(epoch from clock_timestamp()) * 1000 as ms`)[0]!.ms));
  await Bun.sleep(500);
  await load(Math.max(2, Math.round(seconds / 2)));
  // A commit after the moment in a closed segment: every tool's archive holds what the target needs.
  const closed = (await sql`select pg_walfile_name(pg_switch_wal()) as n`)[0]!.n as string;
  const atEnd = await lsn();
  await caughtUp(RECEIVER_APP_NAME);
  if (barmanOn)
    await until(
      "Barman to receive the closed segment",
      async () => (await stat(join(bmDir, "home", "bench", "streaming", closed)).catch(() => null)) !== null,
    );
  if (pgbackrestOn)
    await until("pgBackRest to archive", async () => {
      const [r] = await sql<{ l: string | null }[]>`select last_archived_wal as l from pg_stat_archiver`;
      return !!r?.l && r.l >= closed;
    });
  await Bun.sleep(2000); // our archiver seals what the receiver finished
  if (barmanOn) await timed(bm(["archive-wal", "bench"]));
  const pgTime = moment.toISOString().replace("T", " ").replace("Z", "+00");
  console.log(`restore target ${moment.toISOString()}, data there: ${expected}`);

  const restore = { shinkei: [] as number[], pgbackrest: [] as number[], barman: [] as number[] };
  const exact = { shinkei: true, pgbackrest: true, barman: true };
  let barmanShort = 0;
  for (let round = 0; round < rounds; round++) {
    const order = ["shinkei", "pgbackrest", "barman"] as const;
    for (const kind of round % 2 ? [...order].reverse() : order) {
      if (!{ shinkei: true, pgbackrest: pgbackrestOn, barman: barmanOn }[kind]) continue;
      // Each one said when it starts and ends: a wait that fails is then plainly that peer's.
      console.log(`restore round ${round + 1}: ${kind} started`);
      const dest = join(work, `restore-${kind}-${round}`);
      if (kind === "shinkei") {
        const t0 = performance.now();
        const r = await timed([bin, "pitr", "restore", "--to", moment.toISOString(), "--json"], {
          env: oursEnv(oursDir, "shinkei_bench"),
        });
        const out = JSON.parse(r.stdout) as { url: string; instance: string };
        if (round === 0) console.log(r.stderr.trim());
        console.log(
          `shinkei pitr restore: command ${fmtMs(r.ms)}, ` +
            `recovery ${fmtMs((JSON.parse(r.stdout) as { durationMs: number }).durationMs)}`,
        );
        const got = await answer(scratchOf(out), digestQuery);
        restore.shinkei.push(performance.now() - t0);
        exact.shinkei &&= got === expected;
        await timed([bin, "pitr", "cleanup"], { env: oursEnv(oursDir, "shinkei_bench") });
      } else if (kind === "pgbackrest" && pgbackrestOn) {
        await serverDir(dest);
        const t0 = performance.now();
        await timed(
          pbr([`--pg1-path=${dest}`, "--type=time", `--target=${pgTime}`, "--target-action=promote", "restore"]),
        );
        const got = await answer(await startRestored(dest), digestQuery);
        restore.pgbackrest.push(performance.now() - t0);
        exact.pgbackrest &&= got === expected;
        await stopRestored(dest);
      } else if (kind === "barman" && barmanOn) {
        await serverDir(join(work, "barman-dest"));
        const into = join(work, "barman-dest", `r${round}`);
        const recover = () =>
          timed(bm(["recover", "--target-time", pgTime, "--target-action", "promote", "bench", "latest", into]));
        let t0 = performance.now();
        await recover();
        const endedEarly = /recovery ended before configured recovery target was reached/;
        // pg_ctl start may fail on it, or return first (read-only connections) and the server stop after.
        let got = await startRestored(into)
          .then((r) => answer(r, digestQuery))
          .catch((e: Error) => e);
        if (got instanceof Error) {
          if (!endedEarly.test(got.message)) throw got;
          // Barman copies WAL up to the first segment closed (by its file's time) after the target; the
          // commit that ends recovery can lie in the next one. Then again with get-wal, by hand (as in 4).
          barmanShort++;
          const when = /it stopped/.test(got.message) ? "after pg_ctl start returned" : "while pg_ctl start waited";
          console.log(
            `Barman round ${round + 1}: recovery ended before the target (${when}); again with get-wal by hand`,
          );
          await stopRestored(into);
          t0 = performance.now();
          await recover();
          await barmanGetWal(into, { partial: false });
          got = await answer(await startRestored(into), digestQuery);
        }
        restore.barman.push(performance.now() - t0);
        exact.barman &&= got === expected;
        await stopRestored(into);
      }
      console.log(`restore round ${round + 1}: ${kind} answered after ${fmtMs(restore[kind].at(-1)!)}`);
    }
  }
  const fmtRestore = (k: keyof typeof restore) =>
    restore[k].length
      ? `${fmtMs(median(restore[k]))}${exact[k] ? ", exact" : ", DATA DIFFERS"}${
          k === "barman" && barmanShort ? ` (get-wal by hand in ${barmanShort} of ${restore[k].length})` : ""
        }`
      : "skipped";
  const walAfterBase = Number(
    atEnd - parseLsn((await sql`select redo_lsn::text as l from pg_control_checkpoint()`)[0]!.l),
  );
  add({
    measurement: "restore to a moment, until it answers",
    shinkei: fmtRestore("shinkei"),
    pgbackrest: fmtRestore("pgbackrest"),
    barman: fmtRestore("barman"),
    floor: "",
    raw: {
      ms: restore,
      exact,
      barmanGetWalByHand: barmanShort,
      pgbackrestRatio: restore.pgbackrest.length ? median(restore.shinkei) / median(restore.pgbackrest) : null,
      walAfterBaseApprox: walAfterBase,
    },
  });

  // ---- 4. acknowledged commits lost when the primary and its data directory are lost ----
  // Every archiver is on at once; each insert's id is recorded the moment its commit returns.
  const acked: number[] = [];
  let next = 0;
  let dead = false;
  const loader = postgres(url, { max: 8, onnotice: () => {}, max_lifetime: null, idle_timeout: 0 });
  const workers = Array.from({ length: 8 }, async () => {
    while (!dead) {
      const id = ++next;
      try {
        await loader`insert into acked values (${id})`;
        acked.push(id);
      } catch {
        return;
      }
    }
  });
  const pgbenchLoad = load(lossSeconds + 5).catch(() => null);
  await Bun.sleep(lossSeconds * 1000);
  const postmaster = Number((await readFile(join(cluster.dataDir, "postmaster.pid"), "utf8")).split("\n")[0]);
  const pids = [postmaster, ...(await childrenOf(postmaster))];
  Bun.spawnSync(["kill", "-9", ...pids.map(String)]);
  dead = true;
  await Promise.race([Promise.all(workers), Bun.sleep(5000)]);
  await pgbenchLoad;
  loader.end({ timeout: 0 }).catch(() => {});
  const ackedSet = new Set(acked);
  console.log(`killed the primary (kill -9 of ${pids.length} processes) after ${acked.length} acknowledged inserts`);
  await Bun.sleep(1000);
  await ours.stop();
  ours = null;
  await stopBarman();
  /** Recorded acknowledged ids the recovered server lacks. */
  const lostIn = (r: Restored) =>
    onPrimary(r, "the recovered server to answer as a primary", async (db) => {
      const have = new Set((await db`select id from acked`).map((row) => Number(row.id)));
      let lost = 0;
      for (const id of ackedSet) if (!have.has(id)) lost++;
      return lost;
    });
  const lost: Record<string, number | string> = {};
  {
    const r = await timed([bin, "pitr", "restore", "--to", "latest", "--json"], {
      env: oursEnv(oursDir, "shinkei_bench"),
    });
    lost.shinkei = await lostIn(scratchOf(JSON.parse(r.stdout) as { url: string; instance: string }));
    await timed([bin, "pitr", "cleanup"], { env: oursEnv(oursDir, "shinkei_bench") });
  }
  if (pgbackrestOn) {
    const dest = join(work, "lost-pgbackrest");
    await serverDir(dest);
    await timed(pbr([`--pg1-path=${dest}`, "restore"]));
    lost.pgbackrest = await lostIn(await startRestored(dest));
    await stopRestored(dest);
  }
  if (barmanOn) {
    await timed(bm(["archive-wal", "bench"]));
    await serverDir(join(work, "barman-dest"));
    const plain = join(work, "barman-dest", "lost-as-is");
    await timed(bm(["recover", "bench", "latest", plain]));
    lost.barmanAsIs = await lostIn(await startRestored(plain));
    await stopRestored(plain);
    const edited = join(work, "barman-dest", "lost-edited");
    await timed(bm(["recover", "bench", "latest", edited]));
    await barmanGetWal(edited, { partial: true });
    lost.barman = await lostIn(await startRestored(edited));
    await stopRestored(edited);
  }
  add({
    measurement: `acknowledged commits lost (of ${acked.length})`,
    shinkei: String(lost.shinkei),
    pgbackrest: pgbackrestOn ? String(lost.pgbackrest) : "skipped",
    barman: barmanOn ? `${lost.barman} (as recovered: ${lost.barmanAsIs})` : "skipped",
    floor: "0",
    raw: { acked: acked.length, lost },
  });

  const result = {
    date: new Date().toISOString(),
    machine: `${cpus().length} × ${cpus()[0]?.model}`,
    scale,
    rounds,
    seconds,
    lossSeconds,
    skipped,
    configuration,
    rows,
  };
  await writeResults(
    join(import.meta.dir, "peers-results.json"),
    JSON.stringify(result, null, 2).replaceAll(work, "<work>") + "\n",
  );
  // Said again at the end, beside the table: a peer left out is not a peer that did well.
  for (const s of skipped) console.log(`skipped ${s}`);
  if (smoke) console.log("smoke run: figures mean nothing");
} finally {
  if (ours) await ours.stop().catch(() => {});
  await stopBarman().catch(() => {});
  for (const d of restoredServers)
    await timed(asServer([join(cluster.bin, "pg_ctl"), "-D", d, "stop", "-m", "immediate"])).catch(() => {});
  await timed([bin, "pitr", "cleanup"], { env: oursEnv(oursDir, "shinkei_bench") }).catch(() => {});
  await sql.end({ timeout: 1 }).catch(() => {});
  await admin.end({ timeout: 1 }).catch(() => {});
  await cluster.stop().catch(() => {});
  await timed(["rm", "-rf", work]).catch(() => {});
}
