import { appendFile, chmod, chown, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { freePort, runAs } from "../../src/pg/localdb.ts";
import { findServerBinaries } from "../../src/pg/bin.ts";

/**
 * A PostgreSQL cluster of a test's own, from the installed server binaries, on a free loopback
 * port: the machine's shared server refuses replication connections. Replication is allowed for
 * every local user (trust), with slots and WAL senders to spare. `stop()` stops it and deletes its
 * folder. `startClusterFrom` starts an existing data directory (a restored base backup, say).
 */
export type TestCluster = {
  port: number;
  dataDir: string;
  bin: string;
  /** A URL for `database` (default postgres) as the superuser postgres. */
  url(database?: string): string;
  /** Run a server program (pg_ctl, pg_controldata, ...) as the cluster's OS user. */
  run(tool: string, args: string[]): Promise<{ code: number; output: string }>;
  stop(): Promise<void>;
};

/**
 * Test clusters write 1 MiB WAL segments (initdb --wal-segsize=1), not PostgreSQL's 16 MiB: every
 * pg_switch_wal then costs one small file to receive, seal and upload instead of 16 MiB of mostly
 * zeros. The code under test reads the size from the server, so it is exercised as it is in production.
 */
export const TEST_WAL_SEGMENT_BYTES = 1024 * 1024;

export type ClusterOptions = {
  /** WAL segment size in MiB (a power of 2); TEST_WAL_SEGMENT_BYTES unless a test needs PostgreSQL's 16. */
  walSegmentMiB?: number;
  /** max_slot_wal_keep_size; -1 is PostgreSQL's unbounded default. */
  maxSlotWalKeepSize?: string;
  settings?: Record<string, string>;
};

function serverBin(): string {
  const bin = findServerBinaries();
  if (!bin)
    throw new Error("no PostgreSQL server binaries (initdb, pg_ctl) are installed; install the postgresql package");
  // pg_ctl on PATH may be a link into the version's own folder, which holds the other programs too.
  return dirname(realpathSync(join(bin, "pg_ctl")));
}

async function exec(cmd: string[]): Promise<{ code: number; output: string }> {
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, output: `${out}${err}`.trim() };
}

/**
 * initdb a new data directory `dataDir` (its parent must exist) as the server's OS user: superuser
 * postgres, trust for local logins, UTF8, no locale, plus `args`. Throws with initdb's output.
 */
export async function initTrustCluster(dataDir: string, args: string[] = []): Promise<void> {
  const bin = serverBin();
  const as = await runAs();
  await mkdir(dataDir, { mode: 0o700 });
  if (as.uid !== undefined) await chown(dataDir, as.uid, as.gid!);
  const r = await exec([
    ...as.prefix,
    join(bin, "initdb"),
    "-D",
    dataDir,
    "-U",
    "postgres",
    "--auth=trust",
    "-E",
    "UTF8",
    "--no-locale",
    ...args,
  ]);
  if (r.code !== 0) throw new Error(`initdb failed: ${r.output}`);
}

export async function startCluster(options: ClusterOptions = {}): Promise<TestCluster> {
  const root = await mkdtemp(join(tmpdir(), "shinkei-cluster-"));
  await chmod(root, 0o755);
  const dataDir = join(root, "data");
  await initTrustCluster(dataDir, [
    "--no-sync",
    `--wal-segsize=${options.walSegmentMiB ?? TEST_WAL_SEGMENT_BYTES / 1024 / 1024}`,
  ]);
  const settings: Record<string, string> = {
    wal_level: "replica",
    max_wal_senders: "10",
    max_replication_slots: "10",
    max_slot_wal_keep_size: options.maxSlotWalKeepSize ?? "256MB",
    // A test server: durability of the server itself is not what is under test, speed is welcome.
    fsync: "off",
    synchronous_commit: "off",
    full_page_writes: "on",
    shared_buffers: "32MB",
    ...options.settings,
  };
  await appendFile(
    join(dataDir, "postgresql.conf"),
    Object.entries(settings)
      .map(([k, v]) => `${k} = '${v}'\n`)
      .join(""),
  );
  await appendFile(
    join(dataDir, "pg_hba.conf"),
    "host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
  );
  return startClusterFrom(dataDir, { removeOnStop: root });
}

/** Start the cluster in `dataDir` (owned by the server's OS user) on a free loopback port. */
export async function startClusterFrom(dataDir: string, options: { removeOnStop?: string } = {}): Promise<TestCluster> {
  const bin = serverBin();
  const as = await runAs();
  const port = await freePort();
  const run = (tool: string, args: string[]) => exec([...as.prefix, join(bin, tool), ...args]);
  const start = await run("pg_ctl", [
    "-D",
    dataDir,
    "start",
    "-w",
    "-t",
    "60",
    "-l",
    join(dataDir, "server.log"),
    "-o",
    `-c listen_addresses=127.0.0.1 -c port=${port} -c unix_socket_directories=''`,
  ]);
  if (start.code !== 0) {
    const log = await Bun.file(join(dataDir, "server.log"))
      .text()
      .catch(() => "");
    throw new Error(`pg_ctl start failed: ${start.output}\n${log.slice(-2000)}`);
  }
  return {
    port,
    dataDir,
    bin,
    url: (database = "postgres") => `postgres://postgres@127.0.0.1:${port}/${database}`,
    run,
    async stop() {
      await run("pg_ctl", ["-D", dataDir, "stop", "-m", "immediate", "-w"]);
      if (options.removeOnStop) await rm(options.removeOnStop, { recursive: true, force: true });
    },
  };
}

/**
 * A streaming standby of `primary` (pg_basebackup -R), started on its own port: a copy to
 * promote, which moves it to a new timeline.
 */
export async function startStandby(primary: TestCluster): Promise<TestCluster> {
  const as = await runAs();
  const root = await mkdtemp(join(tmpdir(), "shinkei-standby-"));
  await chmod(root, 0o755);
  if (as.uid !== undefined) await chown(root, as.uid, as.gid!);
  const dataDir = join(root, "data");
  const r = await primary.run("pg_basebackup", [
    "-d",
    primary.url(),
    "-D",
    dataDir,
    "-R",
    "-X",
    "stream",
    "-c",
    "fast",
    "--no-sync",
  ]);
  if (r.code !== 0) throw new Error(`pg_basebackup for a standby failed: ${r.output}`);
  return startClusterFrom(dataDir, { removeOnStop: root });
}
