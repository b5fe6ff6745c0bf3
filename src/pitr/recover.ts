import { lstat, mkdir, readdir, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import postgres from "postgres";
import type { Config } from "../config/index.ts";
import { connect, describeTarget, LOGIN_SEARCH_PATH, settleWithin, type Sql } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { pump } from "../pg/tools.ts";
import { serverBinaries } from "../pg/bin.ts";
import { codecOf, unsealFrom } from "../storage/seal.ts";
import { sha256File } from "../storage/files.ts";
import type { BackupStore } from "../storage/store.ts";
import { freePort } from "../pg/localdb.ts";
import {
  createInstanceFolder,
  exec,
  readAsServer,
  readInstanceFile,
  removeDayOld,
  removeInstance,
  restoreClient,
  serverEnv,
  startWatchdog,
  writeAsServer,
  writeState,
  type InstanceFolder,
  type InstanceState,
} from "./instance.ts";
import { describeTargetOf, recoverySettings, type RecoveryTarget } from "./target.ts";
import { chooseBase, recoverySources, type BaseChoice, type Window } from "./window.ts";
import { restoreCommand, serveWal, type Served, type WalServer } from "./walserve.ts";
import { scrubSettings } from "./settings.ts";
import { archiveTrust, describeUntrusted } from "../wal/trust.ts";
import type { BaseManifest } from "../wal/base.ts";
import { listArchive, spoolDir, walRoot } from "../wal/archive.ts";
import { parseSegment, segmentName } from "../wal/segments.ts";
import { stderrLog, type Log } from "../log.ts";

export type Reached = {
  /** The last WAL position replayed, and the commit time of the last transaction replayed. */
  lsn: string | null;
  commitTime: string | null;
  /** Target minus the last replayed commit (time targets only). */
  distanceMs: number | null;
  /** The server log's own line on where it stopped, when it wrote one. */
  stopped: string | null;
};

export type Recovery = {
  instance: InstanceState;
  /** postgres://USER:PASSWORD@127.0.0.1:PORT/DATABASE of the scratch instance (null with intoDir). */
  url: string | null;
  base: string;
  window: Window;
  target: string;
  reached: Reached;
  /** No commit after a time target in the archive: all of it was replayed (the same state). */
  replayedAll: boolean;
  walFiles: Served[];
  durationMs: number;
  stop(): Promise<void>;
};

export type RecoverOptions = {
  config: Config;
  target: RecoveryTarget;
  store?: BackupStore;
  /** Leave the instance running for the operator (a watchdog removes it otherwise when we die). */
  keep: boolean;
  /** Stop after recovery and move the data directory here, settings restored, for a new server. */
  intoDir?: string;
  onStep?: (message: string) => void;
  /** Aborted (Ctrl-C, SIGTERM): the recovery stops at its next step, removes its instance and throws CANCELLED. */
  signal?: AbortSignal;
  /** Plain base backups and WAL on a host that encrypts (--allow-unencrypted). */
  allowUnencrypted?: boolean;
  /** Where what a cleanup could not do is written; JSON lines on stderr by default (stdout may be the answer). */
  log?: Log;
};

/** How long one probe of the recovering server may take before its connection is given up. */
const PROBE_MS = 10_000;
const MARK = "# shinkei point-in-time recovery (remove for a normal start)";
/**
 * The scratch instance's own pg_hba.conf (socket trust: only we reach its folder), and where the
 * base's waits meanwhile.
 */
const SCRATCH_HBA = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
const HBA_KEPT = "pg_hba.conf.before-recovery";
/** A value in postgresql.conf's quotes: the parser reads backslash escapes there too. */
const quoteConf = (s: string) => `'${s.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;

/** The end of the server's log (its user writes it, and may make it huge: only the last MiB is read). */
const logText = (path: string) => readInstanceFile(path, 1024 * 1024, { tail: true }) ?? "";

async function logTail(path: string, lines = 12): Promise<string> {
  return logText(path).trim().split("\n").slice(-lines).join("\n");
}

const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e));

/**
 * Recover a scratch instance to `target`: the newest base backup that ends before it (local, else
 * off-site; SHA-256 checked) unpacked into a new temporary folder, PostgreSQL's own recovery with
 * restore_command pointing at shinkei, promoted at the target, on a free loopback port. Whatever
 * fails, or if this process is killed, the instance and its folder are removed.
 */
export async function recoverTo(options: RecoverOptions): Promise<Recovery> {
  try {
    return await recoverOnce(options, options.target);
  } catch (e) {
    // PostgreSQL stops at a time target only on a commit after it; with none in the archive it
    // refuses to end recovery. The target lies inside the window, so nothing committed between the
    // last commit and the target: all of the archive is exactly the state at the target.
    if (options.target.kind !== "time" || !(e instanceof ShinkeiError && e.details?.endedEarly)) throw e;
    // That holds only where recovery ran out of WAL at the archive's end. WAL held after the last
    // segment replayed is a gap (an outage without a slot, a lost slot): the target lies in or
    // beyond it, and what was replayed is not the state at the target.
    const last = e.details?.lastSegment as string | undefined;
    const seg = e.details?.segmentBytes as number | undefined;
    const after = last && seg ? await heldAfter(options.config.backupDir, options.store, last, seg) : null;
    if (last && after)
      throw new ShinkeiError(
        "PITR_OUT_OF_WINDOW",
        `${describeTargetOf(options.target)} cannot be reached: the WAL archive has a gap after ${last}, where ` +
          `recovery from the base backup before the target ended (the archive goes on at ${after})`,
        {
          hint:
            "Choose a moment before the gap, or after the first base backup taken after it (shinkei pitr status " +
            "names the gaps and the base backups); nothing was changed.",
          details: { lastSegment: last, heldAfter: after },
        },
      );
    options.onStep?.(
      "the archive holds no commit after the target: recovering all of it, which is the state at the target",
    );
    return recoverOnce(options, { kind: "latest" });
  }
}

const endedEarly = (log: string) => /before configured recovery target was reached/.test(log);

/**
 * One recovery, phase by phase. `used` is the target PostgreSQL is given; options.target, the one
 * asked for, is what the base is chosen for, what messages name and what is reached is measured
 * against. They differ only when recoverTo recovers all of the archive for a time target.
 */
async function recoverOnce(options: RecoverOptions, used: RecoveryTarget): Promise<Recovery> {
  const started = performance.now();
  await refuseExistingDir(options.intoDir);
  const run = await ScratchRecovery.prepare(options, used);
  let segmentBytes: number | undefined;
  try {
    const { base, window } = await run.chooseBase();
    segmentBytes = base.manifest.segmentBytes;
    await run.unpackVerified(base);
    const major = await run.prepareServer();
    await run.writeRecoverySettings(major);
    await run.serveWal(base.manifest);
    await run.startServer(major);
    await run.waitForReplay();
    // Promoted: the server asks for no more WAL. Stopped before anything removes the folder it serves into.
    await run.stopServingWal();
    const reached = await run.readReached();
    const url = options.intoDir ? await run.handOverTo(options.intoDir) : await run.openToOperator();
    return {
      instance: run.instance,
      url,
      base: base.manifest.file,
      window,
      target: describeTargetOf(options.target),
      reached,
      replayedAll: options.target.kind === "time" && used.kind === "latest",
      walFiles: run.served,
      durationMs: Math.round(performance.now() - started),
      stop: () => removeInstance(run.instance),
    };
  } catch (e) {
    // Read before the instance (and its log) goes.
    if (e instanceof ShinkeiError && e.details?.endedEarly) {
      e.details.lastSegment = run.lastRestored();
      e.details.segmentBytes = segmentBytes;
    }
    await run.discard();
    throw e;
  } finally {
    await run.disconnect();
  }
}

/**
 * Where the archive goes on after a gap behind `last` (the newest segment recovery restored): the
 * first segment after it, on its timeline, that the local archive (sealed, or in the spool) or its
 * off-site copy holds. Null when nothing after `last` is held (it is the end of the archive), or
 * when `last` and the one after it are both held whole (the next arrived since: no gap). A segment
 * held only as an archived partial ends the WAL there: anything after it is past a gap.
 */
async function heldAfter(
  backupDir: string,
  store: BackupStore | undefined,
  last: string,
  segmentBytes: number,
): Promise<string | null> {
  const at = parseSegment(last, segmentBytes);
  if (!at) return null;
  const later = new Set<bigint>();
  const whole = new Set<bigint>();
  const add = (name: string, isWhole: boolean) => {
    const s = parseSegment(name.replace(/\.partial$/, ""), segmentBytes);
    if (!s || s.timeline !== at.timeline) return;
    if (s.segno > at.segno) later.add(s.segno);
    if (isWhole) whole.add(s.segno);
  };
  for (const r of await listArchive(walRoot(backupDir))) add(r.name, r.kind === "segment");
  // The spool: finished segments, and the one being received (the live end of the archive).
  for (const n of await readdir(spoolDir(backupDir)).catch(() => [] as string[])) add(n, true);
  if (store)
    for (const o of await store.list())
      if (o.name.endsWith(".json")) add(o.name.slice(0, -".json".length), !o.name.endsWith(".partial.json"));
  if (later.size === 0 || (whole.has(at.segno) && whole.has(at.segno + 1n))) return null;
  return segmentName(
    at.timeline,
    [...later].reduce((a, b) => (b < a ? b : a)),
    segmentBytes,
  );
}

/** --into-dir makes a new folder: refused before anything starts when the path is taken. */
async function refuseExistingDir(dir: string | undefined): Promise<void> {
  if (!dir) return;
  const taken = await stat(dir).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return false;
      // Neither there nor not there (a folder on the way we may not read): the move at the end would fail too.
      throw new ShinkeiError("RECOVERY_FAILED", `cannot check whether ${dir} exists: ${e.message}`, {
        hint: "Give a path that does not exist yet, on a disk with room for the database.",
      });
    },
  );
  if (taken) {
    throw new ShinkeiError(
      "DIRECTORY_EXISTS",
      `${dir} already exists; --into-dir makes a new folder and never overwrites one`,
      { hint: "Give a path that does not exist yet, on a disk with room for the database." },
    );
  }
}

/** The named state of one recovery: its instance and folders, the targets, the WAL served, the connection. */
class ScratchRecovery {
  /** WAL files recovery took, in order. */
  readonly served: Served[] = [];
  /** Where this process fetches WAL for the server (restore_command's socket); null once stopped. */
  private wal: WalServer | null = null;
  /** Our connection to the recovering server, over its socket. */
  private sql: Sql | null = null;
  private readonly log: Log;

  private constructor(
    private readonly options: RecoverOptions,
    /** The target PostgreSQL is given (see recoverOnce). */
    private readonly used: RecoveryTarget,
    private readonly folder: InstanceFolder,
    /** Ours only: downloads, and the WAL fetched before it is handed over. */
    private readonly scratch: string,
    readonly instance: InstanceState,
  ) {
    this.log = options.log ?? stderrLog;
  }

  /** A new instance folder, its state written and a watchdog that removes it if this process dies. */
  static async prepare(options: RecoverOptions, used: RecoveryTarget): Promise<ScratchRecovery> {
    await removeDayOld();
    const folder = await createInstanceFolder();
    const { root, dataDir, socketDir } = folder;
    const scratch = join(root, "work");
    await mkdir(scratch, { mode: 0o700 });
    const instance: InstanceState = {
      pitrInstanceVersion: 1,
      root,
      dataDir,
      socketDir,
      bin: "",
      port: 0,
      ownerPid: process.pid,
      createdAt: new Date().toISOString(),
      keep: false,
      target: describeTargetOf(options.target),
    };
    await writeState(instance);
    startWatchdog(root);
    return new ScratchRecovery(options, used, folder, scratch, instance);
  }

  /** The target asked for: what the base is chosen for, messages name and what is reached is measured against. */
  private get asked(): RecoveryTarget {
    return this.options.target;
  }

  private get socket(): string {
    return join(this.folder.walDir, "wal.sock");
  }

  private cancelled(): void {
    if (this.options.signal?.aborted)
      throw new ShinkeiError("CANCELLED", "the point-in-time recovery was cancelled; its scratch instance was removed");
  }

  private step(message: string): void {
    this.cancelled();
    this.options.onStep?.(message);
  }

  /** The base backup and window for the target asked, among what this host trusts. */
  async chooseBase(): Promise<{ base: BaseChoice; window: Window }> {
    const { config, store, allowUnencrypted } = this.options;
    // Only what this host signed (and, where it encrypts, encrypted) is a candidate: anything else
    // is named and left out.
    const { windows, bases, untrusted } = await recoverySources(
      config.backupDir,
      store,
      this.scratch,
      archiveTrust(config.backup.age, { unencrypted: allowUnencrypted }),
    );
    for (const line of describeUntrusted(untrusted)) this.step(`left out: ${line}`);
    return chooseBase(this.asked, windows, bases);
  }

  /** The base unpacked into the data directory, its SHA-256 matching its manifest; a download is removed after. */
  async unpackVerified(base: BaseChoice): Promise<void> {
    const m = base.manifest;
    let path = base.localPath;
    if (!path) {
      const { store } = this.options;
      this.step(`downloading base backup ${m.file} from ${store!.location}`);
      path = join(this.scratch, m.file);
      await store!.get(m.file, path);
    }
    // The SHA-256 is read alongside the unpacking (the file is read twice, in parallel): a
    // mismatch throws the scratch copy away before anything starts on it.
    this.step(
      `unpacking base backup ${m.file} (${m.finishedAt}, ${m.startLsn}..${m.stopLsn}) into ${this.folder.dataDir}, ` +
        "checking its SHA-256",
    );
    await this.unpack(path, m);
    if (!base.localPath) await Bun.file(path).delete();
  }

  private async unpack(path: string, m: BaseManifest): Promise<void> {
    const { as, dataDir } = this.folder;
    // tar decompresses in a process of its own (gzip, or zstd when its program is installed): on
    // another core beside the hashing and the decryption, and the pipe carries the compressed
    // bytes, not five to ten times as many. Without a zstd program, zstd is unpacked here.
    const codec = codecOf(m.file);
    const inTar = codec === "gzip" || Bun.which("zstd", { PATH: serverEnv().PATH }) !== null;
    const tar = Bun.spawn(
      [...as.prefix, "tar", "-x", ...(inTar ? [codec === "gzip" ? "-z" : "--zstd"] : []), "-f", "-", "-C", dataDir],
      { stdin: "pipe", stdout: "ignore", stderr: "pipe", env: serverEnv() },
    );
    const tarErr = new Response(tar.stderr).text();
    const hashing = sha256File(path);
    // Awaited below whatever the unpacking does: this only keeps a failure meanwhile from counting as unhandled.
    hashing.catch(() => {});
    let unpackError: unknown = null;
    try {
      await pump(
        (await unsealFrom(path, {
          encryption: m.encryption,
          age: this.options.config.backup.age,
          name: m.file,
          compressed: inTar,
        })) as AsyncIterable<Uint8Array>,
        tar.stdin,
      );
    } catch (e) {
      unpackError = e;
    } finally {
      // tar's own exit status and message, read below, say whether what it was given was whole.
      await Promise.resolve(tar.stdin.end()).catch((e) =>
        this.log({ level: "warn", msg: "pitr: closing tar's input failed", file: m.file, error: messageOf(e) }),
      );
    }
    const sha = await hashing;
    if (sha !== m.sha256)
      throw new ShinkeiError(
        "BACKUP_CORRUPT",
        `${m.file} does not match its manifest (SHA-256 ${sha.slice(0, 12)}…, expected ${m.sha256.slice(0, 12)}…)`,
      );
    if (unpackError) throw unpackError;
    if ((await tar.exited) !== 0)
      throw new ShinkeiError("BACKUP_CORRUPT", `unpacking ${m.file} failed: ${(await tarErr).trim()}`);
  }

  /** The base's settings scrubbed, the binaries of its major version and a free port chosen; the major version. */
  async prepareServer(): Promise<number> {
    const { as, dataDir } = this.folder;
    const major = Number((await readAsServer(as, join(dataDir, "PG_VERSION"))).trim());
    const removed = await scrubBaseSettings(as, dataDir);
    if (removed.length)
      this.step(
        "removed from the base backup's settings before starting it (they run programs, load code or read other " +
          `files): ${[...new Set(removed)].join(", ")}`,
      );
    this.instance.bin = await serverBinaries(major);
    this.instance.port = freePort();
    await writeState(this.instance);
    return major;
  }

  /** The settings, pg_hba.conf and recovery.signal the instance recovers with. */
  async writeRecoverySettings(major: number): Promise<void> {
    const { as, dataDir, root, socketDir, stageDir } = this.folder;
    // What the instance needs to recover, and nothing the live server's settings would add:
    // loopback only, no archiving or replication of its own, our pg_hba.
    const settings: Record<string, string> = {
      restore_command: restoreCommand(stageDir, await restoreClient(root), this.socket),
      ...recoverySettings(this.used),
      recovery_target_timeline: "latest",
      recovery_target_action: "promote",
      listen_addresses: "127.0.0.1",
      port: String(this.instance.port),
      unix_socket_directories: socketDir,
      archive_mode: "off",
      hot_standby: "on",
      primary_conninfo: "",
      primary_slot_name: "",
      synchronous_standby_names: "",
      logging_collector: "off",
      // The log is read for how recovery ended and what it restored: in English, whatever the base
      // backup's settings say, with the server's LOG lines in it.
      lc_messages: "C",
      log_min_messages: "warning",
      // The unpacked files were never synced, so the server syncs the data directory before it
      // recovers: file by file that is seconds for a large one; one syncfs() is a fraction of it.
      ...(major >= 14 ? { recovery_init_sync_method: "syncfs" } : {}),
    };
    // Written as the server's user: the data directory is its folder (see writeAsServer).
    await writeAsServer(
      as,
      join(dataDir, "postgresql.auto.conf"),
      `\n${MARK}\n${Object.entries(settings)
        .map(([k, v]) => `${k} = ${quoteConf(v)}`)
        .join("\n")}\n`,
      { append: true },
    );
    // Kept to be put back by --into-dir: without the copy, the handed-over server would trust every local user.
    const kept = await exec([
      ...as.prefix,
      "cp",
      "--no-dereference",
      join(dataDir, "pg_hba.conf"),
      join(dataDir, HBA_KEPT),
    ]);
    if (kept.code !== 0)
      throw new ShinkeiError("RECOVERY_FAILED", `keeping the base backup's pg_hba.conf failed: ${kept.output}`, {
        hint: "Nothing was changed; the scratch instance was removed.",
      });
    await writeAsServer(as, join(dataDir, "pg_hba.conf"), SCRATCH_HBA);
    await writeAsServer(as, join(dataDir, "recovery.signal"), "");
  }

  /** restore_command's side of this process, staging from the base's first segment on. */
  async serveWal(m: BaseManifest): Promise<void> {
    const { as, stageDir } = this.folder;
    this.wal = serveWal({
      config: this.options.config,
      store: this.options.store,
      socket: this.socket,
      scratch: this.scratch,
      segmentBytes: m.segmentBytes,
      stage: { dir: stageDir, uid: as.uid, gid: as.gid },
      first: m.startSegment,
      onFile: (f) => this.served.push(f),
      allowUnencrypted: this.options.allowUnencrypted,
      log: this.log,
    });
    await this.wal.ready();
  }

  async stopServingWal(): Promise<void> {
    const wal = this.wal;
    this.wal = null;
    await wal?.stop();
  }

  /** pg_ctl start, waiting until the server accepts connections (recovery goes on after). */
  async startServer(major: number): Promise<void> {
    const { as, dataDir, logFile } = this.folder;
    this.step(
      `starting PostgreSQL ${major} on 127.0.0.1:${this.instance.port} ` +
        `and replaying WAL to ${describeTargetOf(this.asked)}`,
    );
    const pgCtl = join(this.instance.bin, "pg_ctl");
    const start = await exec([...as.prefix, pgCtl, "-D", dataDir, "start", "-w", "-t", "3600", "-l", logFile]);
    if (start.code !== 0) {
      const tail = await logTail(logFile, 60);
      throw new ShinkeiError(
        endedEarly(tail) ? "PITR_OUT_OF_WINDOW" : "RECOVERY_FAILED",
        `the scratch instance did not start: ${tail.split("\n").slice(-12).join("\n")}`,
        {
          hint: "Nothing was changed; the scratch instance was removed.",
          details: { endedEarly: endedEarly(tail) },
        },
      );
    }
  }

  /** Until the server has promoted (recovery over), reporting progress every few seconds. */
  async waitForReplay(): Promise<void> {
    const who = describeTarget(this.options.config.databaseUrl);
    let sql = this.connect(who.user, who.database);
    this.sql = sql;
    let lastReport = 0;
    for (;;) {
      // No answer is expected while the server is busy or just stopped: whether it is alive is asked next.
      // A probe gets PROBE_MS: postgres.js can leave a query pending for good on a connection the
      // server closed during its handshake, and this loop must never wait on one.
      let timer: Timer | undefined;
      const probe = sql<{ r: boolean; lsn: string | null }[]>`
        select pg_is_in_recovery() as r, pg_last_wal_replay_lsn()::text as lsn`.catch(() => null);
      const row = await Promise.race([
        probe,
        new Promise<"stuck">((resolve) => (timer = setTimeout(() => resolve("stuck"), PROBE_MS))),
      ]).finally(() => clearTimeout(timer));
      if (row === "stuck") {
        // A new connection for the next probe; the stuck one is let go without waiting on it.
        void settleWithin(sql.end({ timeout: 0 }), 1000);
        sql = this.connect(who.user, who.database);
        this.sql = sql;
        if (!(await this.alive())) throw await this.stoppedEarly();
        continue;
      }
      if (row && !row[0]!.r) break;
      if (!row && !(await this.alive())) throw await this.stoppedEarly();
      if (Date.now() - lastReport > 5000) {
        if (lastReport) this.step(`replaying: at ${row?.[0]?.lsn ?? "?"}, ${this.served.length} WAL file(s) fetched`);
        lastReport = Date.now();
      }
      this.cancelled();
      await Bun.sleep(100);
    }
  }

  private async alive(): Promise<boolean> {
    const { as, dataDir } = this.folder;
    return (await exec([...as.prefix, join(this.instance.bin, "pg_ctl"), "-D", dataDir, "status"])).code === 0;
  }

  /** Why the server stopped before the target: the errors at the end of its log. */
  private async stoppedEarly(): Promise<ShinkeiError> {
    const tail = await logTail(this.folder.logFile, 60);
    return new ShinkeiError(
      endedEarly(tail) ? "PITR_OUT_OF_WINDOW" : "RECOVERY_FAILED",
      `recovery stopped before reaching ${describeTargetOf(this.asked)}: ${
        tail
          .split("\n")
          .filter((l) => /FATAL|PANIC|ERROR|invalid|incorrect|checksum|contrecord/.test(l))
          .slice(-4)
          .join(" | ") || tail
      }`,
      {
        hint: "Nothing was changed; the scratch instance was removed. See shinkei pitr status for the window and gaps.",
        details: { endedEarly: endedEarly(tail) },
      },
    );
  }

  /** The newest WAL segment the server's log says it restored from the archive (stage or socket). */
  lastRestored(): string | undefined {
    const names = [...logText(this.folder.logFile).matchAll(/restored log file "([0-9A-F]{24})" from archive/g)]
      .map((m) => m[1]!)
      .sort();
    return names.at(-1);
  }

  /** Where replay stopped: the last position and commit, measured against the target asked. */
  async readReached(): Promise<Reached> {
    const [r] = await this.sql!<
      { lsn: string | null; at: Date | null }[]
    >`select pg_last_wal_replay_lsn()::text as lsn, pg_last_xact_replay_timestamp() as at`;
    const text = logText(this.folder.logFile);
    const stopped = /recovery stopping (?:before|after) [^\n]*/.exec(text)?.[0] ?? null;
    const asked = this.asked;
    return {
      lsn: r!.lsn,
      commitTime: r!.at ? r!.at.toISOString() : null,
      distanceMs: asked.kind === "time" && r!.at ? asked.at.getTime() - r!.at.getTime() : null,
      stopped,
    };
  }

  /** --into-dir: the recovered data directory stopped and moved to `dir`, the rest of the instance removed. */
  async handOverTo(dir: string): Promise<null> {
    await this.disconnect();
    await handOver(this.instance, dir, this.folder.as);
    await removeInstance(this.instance);
    return null;
  }

  /** The running instance's URL, with a password of its own; kept (or not) as asked. */
  async openToOperator(): Promise<string> {
    const who = describeTarget(this.options.config.databaseUrl);
    const { port } = this.instance;
    // Loopback with a password of its own: other local users cannot read the recovered data.
    const password = Buffer.from(crypto.getRandomValues(new Uint8Array(18))).toString("base64url");
    // Set by the instance's bootstrap superuser (over the socket, which our pg_hba trusts): the
    // role we recover as may not alter itself (PostgreSQL before 16 refuses that to a REPLICATION
    // role that is no superuser, such as the backup service's).
    const [boot] = await this.sql!<
      { name: string }[]
    >`select rolname as name from pg_catalog.pg_roles where oid = 10::oid`;
    const su = this.connect(boot!.name, who.database);
    try {
      await su.unsafe(`alter role ${JSON.stringify(who.user)} password '${password}'`);
    } finally {
      await su.end({ timeout: 2 });
    }
    const url =
      `postgres://${encodeURIComponent(who.user)}:${password}` +
      `@127.0.0.1:${port}/${encodeURIComponent(who.database)}`;
    this.instance.url = url;
    this.instance.keep = this.options.keep;
    await writeState(this.instance);
    return url;
  }

  /** A connection to the instance over its unix socket (our pg_hba trusts it). */
  private connect(user: string, database: string): Sql {
    return postgres({
      path: join(this.folder.socketDir, `.s.PGSQL.${this.instance.port}`),
      user,
      database,
      max: 1,
      onnotice: () => {},
      connect_timeout: 5,
      connection: LOGIN_SEARCH_PATH,
    });
  }

  async disconnect(): Promise<void> {
    const sql = this.sql;
    this.sql = null;
    await sql?.end({ timeout: 2 }).catch((e) =>
      this.log({
        level: "warn",
        msg: "pitr: closing the connection to the scratch instance failed",
        error: messageOf(e),
      }),
    );
  }

  /** After a failure: stop serving WAL, remove the instance (failing that, the watchdog or the day-old sweep will). */
  async discard(): Promise<void> {
    await this.stopServingWal();
    await removeInstance(this.instance).catch((e) =>
      this.log({
        level: "warn",
        msg: "pitr: removing the scratch instance failed",
        root: this.instance.root,
        error: messageOf(e),
      }),
    );
  }
}

/**
 * Comment out every setting of the unpacked base that runs a program, loads code or reads another
 * file (see settings.ts), in both files the server reads; the names removed. A settings file that
 * is not a regular file (a link out of the folder, a FIFO) refuses the base.
 */
async function scrubBaseSettings(as: { prefix: string[] }, dataDir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of ["postgresql.conf", "postgresql.auto.conf"]) {
    const path = join(dataDir, name);
    const st = await lstat(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return null;
      throw e;
    });
    if (!st) continue;
    if (!st.isFile())
      throw new ShinkeiError("RECOVERY_FAILED", `the base backup's ${name} is not a regular file`, {
        hint: "Nothing was started; the scratch instance was removed.",
      });
    const scrubbed = scrubSettings(await readAsServer(as, path));
    if (!scrubbed.removed.length) continue;
    await writeAsServer(as, path, scrubbed.text);
    removed.push(...scrubbed.removed);
  }
  return removed;
}

/** Stop the recovered server, undo our settings (keeping the recovered state), move it to `dir`. */
async function handOver(instance: InstanceState, dir: string, as: { prefix: string[] }): Promise<void> {
  const { dataDir, bin } = instance;
  const stop = await exec([...as.prefix, join(bin, "pg_ctl"), "-D", dataDir, "stop", "-m", "fast", "-w", "-t", "120"]);
  if (stop.code !== 0)
    throw new ShinkeiError("RECOVERY_FAILED", `stopping the recovered instance failed: ${stop.output}`);
  const auto = join(dataDir, "postgresql.auto.conf");
  const conf = await readAsServer(as, auto);
  await writeAsServer(
    as,
    auto,
    conf.slice(0, conf.indexOf(`\n${MARK}`) >= 0 ? conf.indexOf(`\n${MARK}`) : conf.length) + "\n",
  );
  // The scratch pg_hba.conf trusts every local user: a data directory handed over with it would too.
  try {
    await rename(join(dataDir, HBA_KEPT), join(dataDir, "pg_hba.conf"));
  } catch (e) {
    throw new ShinkeiError(
      "RECOVERY_FAILED",
      `putting the base backup's pg_hba.conf back failed: ${(e as Error).message}`,
      { hint: "Nothing was handed over; the scratch instance was removed." },
    );
  }
  if ((await readAsServer(as, join(dataDir, "pg_hba.conf"))) === SCRATCH_HBA) {
    throw new ShinkeiError(
      "RECOVERY_FAILED",
      "the recovered data directory still holds the scratch pg_hba.conf (local trust)",
      { hint: "Nothing was handed over; the scratch instance was removed." },
    );
  }
  const mv = await exec(["mv", "-T", "--no-clobber", dataDir, dir]);
  if (mv.code !== 0 || (await Bun.file(join(dataDir, "PG_VERSION")).exists())) {
    throw new ShinkeiError(
      "RECOVERY_FAILED",
      `moving the recovered data directory to ${dir} failed: ${mv.output || "the target exists"}`,
      { hint: "Give a path that does not exist yet, on a disk with room for the database." },
    );
  }
}

/** The scratch instance as a pool (the operator's view: what `shinkei status` would show). */
export const connectRecovered = (url: string): Sql => connect(url, { max: 2 });
