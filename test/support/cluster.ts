import { appendFile, chmod, chown, mkdir, mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { freePort, runAs } from "../../src/pg/localdb.ts";
import { findServerBinaries } from "../../src/pg/bin.ts";
import { startTempDir } from "./fixtures.ts";

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
 * Where initdb's output is kept between clusters: a cache, the one folder test runs leave in the temp
 * directory on purpose. initdb costs seconds of CPU and every test cluster needs the same fresh data
 * directory, so it runs once per server version and set of initdb arguments, and each cluster gets a
 * copy (milliseconds). Deleting the folder at any time is safe: the next cluster makes it again.
 * Copies of one template share its database system identifier; nothing in shinkei reads it, and
 * PostgreSQL checks it only when WAL meets a data directory, which in the tests is always its own.
 * One folder per OS user: a template root made belongs to the server's user, another's to them.
 * In the temp directory the run started with, not the run's own on tmpfs (see the preload), which goes with the run.
 */
export const INITDB_CACHE = join(startTempDir, `shinkei-test-cache-${process.getuid?.() ?? "user"}`);

const templates = new Map<string, Promise<string>>();

/**
 * The cached data directory initdb made for `args`: made when missing. Test files run in several
 * processes at once (bun test --parallel) and start clusters at the same moment: one makes it while
 * the others wait on a lock file, and it is made in a folder of its own and renamed into place, so no
 * process ever copies a half-made one (if two make it anyway, one rename wins and the other's goes).
 */
function initdbTemplate(args: string[]): Promise<string> {
  const key = JSON.stringify(args);
  let made = templates.get(key);
  if (!made) {
    made = makeTemplate(args);
    made.catch(() => templates.delete(key)); // a failure is not remembered: the next cluster tries again
    templates.set(key, made);
  }
  return made;
}

async function makeTemplate(args: string[]): Promise<string> {
  const bin = serverBin();
  const version = await exec([join(bin, "postgres"), "--version"]);
  if (version.code !== 0) throw new Error(`postgres --version failed: ${version.output}`);
  // A new server version (even a minor one) or other arguments: another template.
  const digest = new Bun.CryptoHasher("sha256").update(JSON.stringify([bin, version.output, args])).digest("hex");
  const template = join(INITDB_CACHE, `initdb-${digest.slice(0, 16)}`);
  const ready = () => Bun.file(join(template, "PG_VERSION")).exists();
  if (await ready()) return template;
  await mkdir(INITDB_CACHE, { recursive: true, mode: 0o755 });
  const lock = `${template}.lock`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      await writeFile(lock, String(process.pid), { flag: "wx" });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      if (await ready()) return template;
      // A lock left by a process that was killed while it ran initdb: it is gone.
      const holder = Number(
        await Bun.file(lock)
          .text()
          .catch(() => "0"),
      );
      if (holder && !alive(holder)) await rm(lock, { force: true });
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock} (another test process's initdb)`);
      await Bun.sleep(50);
    }
  }
  const building = await mkdtemp(join(INITDB_CACHE, ".building-"));
  try {
    if (await ready()) return template;
    await chmod(building, 0o755);
    // Synced to disk (no --no-sync), unlike the copies: the template outlives the run, and a machine
    // that crashes must not leave a cached data directory with holes in it.
    await initdb(join(building, "data"), args);
    await rename(join(building, "data"), template).catch(async (e: NodeJS.ErrnoException) => {
      if (!(await ready())) throw e; // the lock was taken over as stale and the other process won
    });
    return template;
  } finally {
    await rm(building, { recursive: true, force: true });
    await rm(lock, { force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function initdb(dataDir: string, args: string[]): Promise<void> {
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

/**
 * A new data directory `dataDir` (its parent must exist; it must not) as initdb makes it, owned by
 * the server's OS user: superuser postgres, trust for local logins, UTF8, no locale, plus `args`.
 * A copy of the cached template for these arguments (see INITDB_CACHE). Throws with initdb's output.
 */
export async function initTrustCluster(dataDir: string, args: string[] = []): Promise<void> {
  const template = await initdbTemplate(args);
  // -a keeps modes (0700) and owners (the server's OS user, when we are root).
  const r = await exec(["cp", "-a", template, dataDir]);
  if (r.code !== 0) throw new Error(`copying the initdb template ${template} failed: ${r.output}`);
}

export async function startCluster(options: ClusterOptions = {}): Promise<TestCluster> {
  const root = await mkdtemp(join(tmpdir(), "shinkei-cluster-"));
  await chmod(root, 0o755);
  const dataDir = join(root, "data");
  await initTrustCluster(dataDir, [`--wal-segsize=${options.walSegmentMiB ?? TEST_WAL_SEGMENT_BYTES / 1024 / 1024}`]);
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
  const port = freePort();
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
