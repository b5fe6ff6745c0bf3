import { closeSync, constants, existsSync, fstatSync, lstatSync, openSync, readFileSync, readSync } from "node:fs";
import { chmod, chown, link, mkdir, mkdtemp, readdir, realpath, rm, stat, copyFile, writeFile } from "node:fs/promises";
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { runAs } from "../pg/localdb.ts";

/**
 * A scratch PostgreSQL instance for point-in-time recovery: one temporary folder
 * `$TMPDIR/shinkei-pitr-instance-XXXXXX/` holding the data directory, the server's unix sockets,
 * its log, what restore_command needs (see createInstanceFolder) and `instance.json`, the state
 * `pitr cleanup` reads. The live server's data directory is never involved. When TMPDIR is too
 * deep for a unix socket's path, the sockets live in a short folder of their own (see socketsFolder).
 */
export type InstanceState = {
  pitrInstanceVersion: 1;
  root: string;
  dataDir: string;
  socketDir: string;
  bin: string;
  port: number;
  /** The shinkei process building it: while it lives, the instance is in use. */
  ownerPid: number;
  createdAt: string;
  /** Kept running on purpose (restore without --stop): a watchdog leaves it alone. */
  keep: boolean;
  url?: string;
  target?: string;
};

export const INSTANCE_PREFIX = "shinkei-pitr-instance-";
const STATE = "instance.json";
const DAY_MS = 86_400_000;

export const instanceRoot = () => tmpdir();

/*
 * A unix socket's path must fit sun_path: 108 bytes with its closing NUL, and PostgreSQL refuses
 * a longer one ("could not create any Unix-domain sockets"). The server's socket,
 * `<folder>/sockets/.s.PGSQL.<port>`, is the longest socket path in an instance folder; when it
 * would not fit under TMPDIR, the sockets go to a short folder of ours under /tmp instead, with
 * the same parts and modes, removed with the instance (its socketDir names it).
 */
const SOCKET_PATH_MAX = 107;
export const SOCKETS_PREFIX = "shinkei-pitr-sockets-";
const SHORT_ROOT = "/tmp";
const fitsSockets = (folder: string) => Buffer.byteLength(join(folder, "sockets", ".s.PGSQL.65535")) <= SOCKET_PATH_MAX;

/** The folder holding an instance's sockets, when it is not the instance's own (see SOCKETS_PREFIX). */
function socketsFolderOf(s: Pick<InstanceState, "root"> & { socketDir?: string }): string | null {
  if (!s.socketDir) return null;
  const folder = dirname(s.socketDir);
  return folder === s.root ? null : folder;
}

/**
 * What is at `folder`, named as a short sockets folder of ours (directly under /tmp, our prefix):
 * "ours" (a folder we own), "gone" (nothing, removed already), or null (not one of ours: left alone).
 */
function socketsFolderState(folder: string): "ours" | "gone" | null {
  if (dirname(folder) !== SHORT_ROOT || !basename(folder).startsWith(SOCKETS_PREFIX)) return null;
  try {
    const st = lstatSync(folder);
    return st.isDirectory() && st.uid === process.getuid?.() ? "ours" : null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ENOENT" ? "gone" : null;
  }
}

export async function writeState(s: InstanceState): Promise<void> {
  await writeFileAtomic(join(s.root, STATE), JSON.stringify(s, null, 2) + "\n");
}

/**
 * A small file inside an instance folder, read as root: the folder's files may be the server's
 * user's, who can leave a link (we would read another file), a FIFO (every pitr command would hang
 * on it) or a huge file there. Opened without following links and without blocking, and read only
 * when it is a regular file of at most `cap` bytes; null otherwise.
 */
export function readInstanceFile(path: string, cap = 64 * 1024, options: { tail?: boolean } = {}): string | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || (st.size > cap && !options.tail)) return null;
    // `tail`: the last `cap` bytes of a longer file (the server's log, which its user may fill).
    const from = Math.max(0, st.size - cap);
    const buf = Buffer.alloc(st.size - from);
    let n = 0;
    while (n < buf.length) {
      const got = readSync(fd, buf, n, buf.length - n, from + n);
      if (got === 0) break;
      n += got;
    }
    return buf.subarray(0, n).toString("utf8");
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

function readState(root: string): InstanceState | null {
  try {
    // Only a folder we made: anyone may create one under the temporary folder, naming any programs.
    const folder = lstatSync(root);
    if (!folder.isDirectory() || folder.uid !== process.getuid?.() || lstatSync(join(root, STATE)).uid !== folder.uid)
      return null;
    const s = JSON.parse(readInstanceFile(join(root, STATE)) ?? "null") as InstanceState;
    // Only a folder of ours, naming paths inside itself (or its sockets' short folder), is ever stopped or removed.
    const sockets = s ? socketsFolderOf(s) : null;
    const ok =
      s?.pitrInstanceVersion === 1 &&
      s.root === root &&
      dirname(s.dataDir) === root &&
      (s.socketDir === undefined || basename(s.socketDir) === "sockets") &&
      (sockets === null || socketsFolderState(sockets) !== null) &&
      Number.isInteger(s.port) &&
      Number.isInteger(s.ownerPid);
    return ok ? s : null;
  } catch {
    return null;
  }
}

/**
 * A new, empty instance folder: where each part lies (PostgreSQL refuses to run as root, so the
 * server may be another user).
 */
export type InstanceFolder = {
  root: string;
  /** The server's: the data directory, its unix sockets, its log. */
  dataDir: string;
  /** In root, or in a short folder of ours when root is too deep for a socket path (see SOCKETS_PREFIX). */
  socketDir: string;
  logFile: string;
  /** Ours, the server's group may only pass: the socket restore_command asks for WAL on (beside socketDir). */
  walDir: string;
  /** Ours, the server's group may take out what it owns (sticky): segments staged for restore_command. */
  stageDir: string;
  as: Awaited<ReturnType<typeof runAs>>;
};

/**
 * The instance's folder. Run as root, the server runs as its own OS user, which owns only what it
 * writes; the folder itself and every path we write through (the WAL handed over, the socket we
 * chmod, the files we chown) stay ours, so that user cannot turn our writes elsewhere with a link.
 */
export async function createInstanceFolder(): Promise<InstanceFolder> {
  const as = await runAs();
  const root = await mkdtemp(join(instanceRoot(), INSTANCE_PREFIX));
  let sockets: string | null = null;
  try {
    const server = as.uid !== undefined;
    // The server's user passes through to its own folders, and lists nothing.
    const passable = server ? 0o711 : 0o700;
    await chmod(root, passable);
    if (!fitsSockets(root)) {
      sockets = await socketsFolder(root);
      await chmod(sockets, passable);
    }
    const f = {
      root,
      dataDir: join(root, "data"),
      socketDir: join(sockets ?? root, "sockets"),
      logFile: join(root, "server.log"),
      walDir: join(sockets ?? root, "wal"),
      stageDir: join(root, "stage"),
      as,
    };
    for (const [dir, mode] of [
      [f.dataDir, 0o700],
      [f.socketDir, 0o700],
      [f.walDir, server ? 0o710 : 0o700],
      [f.stageDir, server ? 0o1770 : 0o700],
    ] as const) {
      await mkdir(dir, { mode: mode & 0o700 }); // never wider than ours while we set it up, whatever the umask
      await chmod(dir, mode);
    }
    await writeFile(f.logFile, "", { mode: 0o600 });
    if (server) {
      for (const p of [f.dataDir, f.socketDir, f.logFile]) await chown(p, as.uid!, as.gid!);
      for (const p of [f.walDir, f.stageDir]) await chown(p, 0, as.gid!);
    }
    return f;
  } catch (e) {
    // Nothing of a half-made instance stays: no state names it yet, so no cleanup would find it.
    for (const p of [sockets, root]) if (p) await rm(p, { recursive: true, force: true }).catch(() => {});
    throw e;
  }
}

/** The short folder for the sockets of an instance whose folder `root` is too deep (see SOCKETS_PREFIX). */
async function socketsFolder(root: string): Promise<string> {
  const socket = `${root}/sockets/.s.PGSQL.<port>`;
  const why = `TMPDIR is too deep for a unix socket path (${socket} passes ${SOCKET_PATH_MAX} bytes)`;
  let folder: string;
  try {
    folder = await mkdtemp(join(SHORT_ROOT, SOCKETS_PREFIX));
  } catch (e) {
    throw new ShinkeiError(
      "RECOVERY_FAILED",
      `${why}, and no folder for the sockets could be made in ${SHORT_ROOT}: ${(e as Error).message}`,
      { hint: "Set TMPDIR to a shorter path, or make /tmp writable." },
    );
  }
  if (!fitsSockets(folder)) {
    await rm(folder, { recursive: true, force: true });
    throw new ShinkeiError("RECOVERY_FAILED", `${why}, and so is ${folder}`, { hint: "Set TMPDIR to a shorter path." });
  }
  return folder;
}

/**
 * What the server's programs (pg_ctl, the server, tar, restore_command) get as environment: no
 * DATABASE_URL, S3 keys or age secrets, which its OS user could read from /proc.
 */
export const serverEnv = (): Record<string, string> => ({ PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" });

export async function exec(cmd: string[]): Promise<{ code: number; output: string }> {
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore", env: serverEnv() });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, output: `${out}${err}`.trim() };
}

/**
 * Write `text` to `path` inside the server's data directory as the server's OS user: that user
 * owns the folder, so a write of ours there could follow a link it planted.
 */
export async function writeAsServer(
  as: { prefix: string[] },
  path: string,
  text: string,
  options: { append?: boolean } = {},
): Promise<void> {
  const p = Bun.spawn([...as.prefix, "tee", ...(options.append ? ["-a"] : []), path], {
    stdin: new Blob([text]),
    stdout: "ignore",
    stderr: "pipe",
    env: serverEnv(),
  });
  const [err, code] = await Promise.all([new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new ShinkeiError("RECOVERY_FAILED", `writing ${path} failed: ${err.trim()}`);
}

const SERVER_FILE_CAP = 4 * 1024 * 1024;

/**
 * Read a file inside the server's data directory as the server's OS user (see writeAsServer): not
 * through a link, without waiting on a FIFO (the base backup's tar may hold either), at most 4 MiB.
 */
export async function readAsServer(as: { prefix: string[] }, path: string): Promise<string> {
  const p = Bun.spawn(
    [
      ...as.prefix,
      "dd",
      `if=${path}`,
      "iflag=nofollow,nonblock",
      `bs=${SERVER_FILE_CAP + 1}`,
      "count=1",
      "status=none",
    ],
    { stdout: "pipe", stderr: "pipe", env: serverEnv() },
  );
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new ShinkeiError("RECOVERY_FAILED", `reading ${path} failed: ${err.trim()}`);
  if (out.length > SERVER_FILE_CAP)
    throw new ShinkeiError("RECOVERY_FAILED", `reading ${path} failed: larger than ${SERVER_FILE_CAP} bytes`);
  return out;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
};

/**
 * The postmaster's pid, when one runs on this data directory. postmaster.pid is the server's user's
 * file (and may be stale after a reboot): the pid counts only when that process is a server
 * started on exactly this data directory, so we never signal anything else.
 */
function postmasterPid(dataDir: string): number | null {
  try {
    const text = readInstanceFile(join(dataDir, "postmaster.pid"));
    if (text === null) return null;
    const pid = Number(text.split("\n")[0]);
    if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return null;
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes(dataDir) ? pid : null;
  } catch {
    return null;
  }
}

/** Stop the instance's server (immediately: it is scratch) and delete its folder, and its sockets' when apart. */
export async function removeInstance(
  s: Pick<InstanceState, "root" | "dataDir" | "bin"> & { socketDir?: string },
): Promise<void> {
  if (postmasterPid(s.dataDir)) {
    const as = await runAs();
    const r = await exec([
      ...as.prefix,
      join(s.bin, "pg_ctl"),
      "-D",
      s.dataDir,
      "stop",
      "-m",
      "immediate",
      "-w",
      "-t",
      "30",
    ]);
    const pid = postmasterPid(s.dataDir);
    if (r.code !== 0 && pid) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone meanwhile, or not ours to signal: the folder goes anyway
      }
    }
  }
  // The sockets' folder first: while the instance's folder (and its state) is there, a later
  // pitr cleanup still finds both.
  const sockets = socketsFolderOf(s);
  if (sockets && socketsFolderState(sockets) === "ours") await removeFolder(sockets);
  await removeFolder(s.root);
}

/**
 * Removed is checked, not assumed: on tmpfs a removal racing the stopped server's last exits has
 * been seen to return with part of the data directory still there. Tried again briefly, then said.
 */
async function removeFolder(path: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    await rm(path, { recursive: true, force: true });
    if (!existsSync(path)) return;
    if (attempt === 10)
      throw new ShinkeiError("RECOVERY_FAILED", `could not remove the scratch instance folder ${path}`, {
        hint: "Something still writes into it; remove it by hand once nothing does.",
      });
    await Bun.sleep(100);
  }
}

export type Leftover = InstanceState & { running: boolean; inUse: boolean; ageMs: number };

/** Every scratch instance folder of ours under the temporary folder, with whether its server runs. */
export async function listInstances(): Promise<Leftover[]> {
  const out: Leftover[] = [];
  for (const n of (await readdir(instanceRoot()).catch(() => [] as string[])).filter((n) =>
    n.startsWith(INSTANCE_PREFIX),
  )) {
    const root = join(instanceRoot(), n);
    const s = readState(root);
    if (!s) continue;
    const created = Date.parse(s.createdAt);
    out.push({
      ...s,
      running: postmasterPid(s.dataDir) !== null,
      inUse: s.ownerPid !== process.pid && alive(s.ownerPid) && !s.keep,
      ageMs: Date.now() - (Number.isNaN(created) ? 0 : created),
    });
  }
  return out;
}

/**
 * Remove leftover instances: all of them not being built right now (`pitr cleanup`), or only those
 * older than a day (what every pitr command does first).
 */
export async function cleanupInstances(options: { olderThanMs?: number } = {}): Promise<Leftover[]> {
  const removed: Leftover[] = [];
  for (const i of await listInstances()) {
    if (i.inUse) continue;
    if (options.olderThanMs !== undefined && i.ageMs < options.olderThanMs) continue;
    await removeInstance(i);
    removed.push(i);
  }
  return removed;
}

export const removeDayOld = () => cleanupInstances({ olderThanMs: DAY_MS });

/**
 * The command that runs this shinkei again: the compiled binary itself, or, from source, bun with
 * the CLI's entry file (whatever script or test loaded this module).
 */
export function selfCommand(): string[] {
  const exe = process.execPath;
  if (/^bun(-debug)?(\.exe)?$/.test(basename(exe))) return [exe, join(import.meta.dir, "..", "..", "cli", "main.ts")];
  return [exe];
}

const ownedByUs = (uid: number) => uid === 0 || uid === (process.getuid?.() ?? 0);

/** Owned by root or us and writable by no group or other user: no one else may change it. */
const oursAlone = (s: { uid: number; mode: number }) => ownedByUs(s.uid) && (s.mode & 0o022) === 0;

/** Readable and runnable by its owner, its group and everyone else: whichever of them the server's user is. */
const runnableByEach = (mode: number) => (mode & 0o555) === 0o555;

/**
 * Where `path` really lies (symlinks resolved) when any user may run it there and no one but root
 * or this process's user may change what runs: the file readable and runnable by owner, group and
 * others, and every folder above it searchable by all three, all of them owned by root or us and
 * writable by no group or other user, unless sticky (/tmp: there no one else may rename or remove
 * what we own). Else null. An ACL that lets another user write shows in the group bits (its mask).
 */
export async function runnableByAll(path: string): Promise<string | null> {
  try {
    const real = await realpath(path);
    const file = await stat(real);
    if (!oursAlone(file) || !runnableByEach(file.mode)) return null;
    for (let d = dirname(real); ; d = dirname(d)) {
      const dir = await stat(d);
      const othersWrite = (dir.mode & 0o022) !== 0 && (dir.mode & 0o1000) === 0;
      if (!ownedByUs(dir.uid) || othersWrite || (dir.mode & 0o111) !== 0o111) return null;
      if (d === dirname(d)) return real;
    }
  } catch {
    return null;
  }
}

/**
 * The command restore_command runs, as the server's OS user. That user may not reach this binary
 * where it lies (a root-only folder, a checkout in a private home), so it runs a copy in a folder
 * of the instance's that every user may read (bun reads the folder of the script it runs): the
 * compiled shinkei itself, or, from source, bun and the CLI bundled into one file. Ours, not the
 * server's user's: it cannot change what runs.
 */
export async function restoreClient(root: string, command = selfCommand()): Promise<string[]> {
  const [exe, entry] = command;
  const dir = join(root, "client");
  await mkdir(dir, { mode: 0o700 });
  await chmod(dir, 0o755);
  // Where every user already reaches and runs the program and none but root or us can change it
  // (an install in /usr/local/bin), it runs from there: a copy of the compiled binary (over 100 MB)
  // is a large part of a small restore.
  const asIs = await runnableByAll(exe!);
  const files: string[] = [asIs ?? join(dir, "shinkei")];
  // A hard link when the file itself is runnable by all and no one else may change it (the link,
  // in a folder the server's user reaches, bypasses the folders that guarded it; no chmod of ours
  // may touch it either): instant. Else, or on another filesystem, a copy of our own.
  const file = await stat(exe!);
  const linked =
    asIs !== null ||
    (oursAlone(file) &&
      runnableByEach(file.mode) &&
      (await link(exe!, files[0]!).then(
        () => true,
        () => false,
      )));
  if (!linked) await copyFile(exe!, files[0]!);
  if (entry) {
    const built = await Bun.build({ entrypoints: [entry], target: "bun" });
    if (!built.success)
      throw new ShinkeiError(
        "RECOVERY_FAILED",
        `cannot bundle the CLI for restore_command: ${built.logs.map(String).join("; ")}`,
      );
    files.push(join(dir, "shinkei.js"));
    await Bun.write(files[1]!, built.outputs[0]!);
  }
  for (const f of files) if (!(linked && f === files[0])) await chmod(f, 0o755);
  return files;
}

/**
 * A detached watchdog (`shinkei pitr cleanup --watch PID DIR`): when the shinkei process that
 * builds an instance dies without cleaning up (SIGKILL included), it stops the server and removes
 * the folder, unless the instance was handed over (`keep`).
 */
export function startWatchdog(root: string): void {
  const [cmd, ...args] = selfCommand();
  const child = spawn(cmd!, [...args, "pitr", "cleanup", "--watch", String(process.pid), root], {
    detached: true,
    stdio: "ignore",
    env: process.env,
  });
  child.unref();
}

export async function watch(ownerPid: number, root: string): Promise<void> {
  if (!basename(root).startsWith(INSTANCE_PREFIX) || dirname(root) !== instanceRoot()) {
    throw new ShinkeiError("USAGE", `${root} is not a scratch instance folder`);
  }
  for (;;) {
    if (!(await stat(root).catch(() => null))) return;
    const s = readState(root);
    if (s?.keep) return;
    if (!alive(ownerPid)) {
      await removeInstance(s ?? { root, dataDir: join(root, "data"), bin: "" });
      return;
    }
    await Bun.sleep(500);
  }
}
