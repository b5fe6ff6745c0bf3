import { chmod, chown, lstat, mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import type { BackupStore } from "../storage/store.ts";
import { fetchWal } from "../wal/fetch.ts";
import { isSegmentName, parseHistory, parseSegment, segmentName } from "../wal/segments.ts";
import { startPoller, type Poller } from "../service/poller.ts";
import { stderrLog, type Log } from "../log.ts";

/** A WAL file recovery took: where it came from, and whether it was fetched ahead (the stage). */
export type Served = { name: string; from: "local" | "offsite" | "receiving" | "partial"; staged: boolean };

/**
 * What restore_command runs: take the segment from the stage with `mv` (no process of ours, no
 * copy: a rename on the same disk), else ask the recovering shinkei over its socket.
 */
export function restoreCommand(stage: string, client: string[], socket: string): string {
  // Shell quotes; a % in a path is written %% (PostgreSQL substitutes %f, %p and %% there).
  const q = (s: string) => `'${s.replaceAll("'", `'\\''`).replaceAll("%", "%%")}'`;
  return (
    `mv -f ${q(stage)}/%f %p 2>/dev/null || ` +
    `exec ${client.map(q).join(" ")} pitr wal-fetch --socket ${q(socket)} %f %p`
  );
}

type Got = { path: string; from: Served["from"]; staged?: boolean };

export type WalServeOptions = {
  config: Config;
  store?: BackupStore;
  socket: string;
  scratch: string;
  segmentBytes: number;
  /** The folder restore_command moves staged segments from, and the owner they must have. */
  stage: { dir: string; uid?: number; gid?: number };
  /** The first segment recovery will ask for: staging starts there, before the server does. */
  first?: string;
  onFile?: (f: Served) => void;
  /** Plain WAL on a host that encrypts (--allow-unencrypted). */
  allowUnencrypted?: boolean;
  /** Where what a cleanup or a fetch ahead could not do is written (nothing the recovery needs is lost there). */
  log?: Log;
};

/** How many sealed segments are fetched ahead of the server: staged and being fetched together. */
const AHEAD = 3;
/** How often the stage is looked at for segments restore_command moved away. */
const COLLECT_MS = 20;

type Staged = {
  segno: bigint;
  timeline: number;
  from: Served["from"];
  /** Checking whether it is still in the stage failed once, and that was logged: not again every pass. */
  checkFailed?: boolean;
};

const notFound = (e: unknown) => e instanceof ShinkeiError && (e.code === "NOT_FOUND" || e.code === "USAGE");
const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e));

/**
 * The WAL for a scratch instance's recovery. The server runs restore_command as its own OS user,
 * which may read neither BACKUP_DIR nor the keys; so this process fetches every file, with every
 * check fetchWal makes, and hands it over inside the instance's own folder, and no secret reaches
 * the instance's files. Two ways:
 * - the stage: the next sealed segments, fetched, checked and unpacked ahead while the server
 *   replays, each renamed into `stage` when whole; restore_command moves it from there (see
 *   restoreCommand), so a segment costs the server a rename, not a process of ours. A segment
 *   moved away is one consumed: the stage is filled again. Only sealed segments are staged: the
 *   one being received may still grow.
 * - the socket, for everything else (`shinkei pitr wal-fetch --socket PATH %f %p`): history files,
 *   a segment the stage does not hold yet, and the end of the archive. fetchWal serves a segment
 *   never archived whole from its partial (the one being received, or a sealed copy), under the
 *   segment's name: recovery to a target inside it replays what it holds.
 */
export function serveWal(options: WalServeOptions): WalServer {
  const server = new WalServer(options);
  server.listen();
  return server;
}

export class WalServer {
  private readonly log: Log;
  /** Numbers the scratch files fetches write to. */
  private fetches = 0;
  /** In the stage, whole, for restore_command to move: by name. */
  private readonly staged = new Map<string, Staged>();
  /** Segments being fetched for the stage, by name: a socket request for one waits for it. */
  private readonly fetching = new Map<string, Promise<void>>();
  /** The next segment to stage; null past the end of what is sealed (the socket serves from there). */
  private next: { timeline: number; segno: bigint } | null = null;
  /** Bumped when the server's requests move staging elsewhere: what was fetched for before is dropped. */
  private epoch = 0;
  private stopped = false;
  private http: ReturnType<typeof Bun.serve> | undefined;
  private collector: Poller | undefined;

  constructor(private readonly options: WalServeOptions) {
    this.log = options.log ?? stderrLog;
  }

  /** Answer restore_command's requests on the socket. */
  listen(): void {
    this.http = Bun.serve({ unix: this.options.socket, fetch: (req) => this.answer(req) });
  }

  async ready(): Promise<void> {
    const { scratch, socket, first, segmentBytes } = this.options;
    await mkdir(scratch, { recursive: true, mode: 0o700 });
    // The socket's folder is ours, and only the server's group may pass (createInstanceFolder).
    await chmod(socket, 0o666);
    this.collector = startPoller(
      () =>
        this.collect().catch((e) =>
          this.log({ level: "warn", msg: "pitr: looking at the WAL stage failed", error: messageOf(e) }),
        ),
      COLLECT_MS,
    );
    const start = first ? parseSegment(first, segmentBytes) : null;
    if (start) this.next = { timeline: start.timeline, segno: start.segno };
    this.fill();
  }

  /** Stop serving, and wait for the fetches under way; what is left in the stage goes with the instance's folder. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.http?.stop(true);
    await this.collector?.stop();
    await Promise.allSettled([...this.fetching.values()]);
  }

  /** A request on the socket: one WAL file, whole, or why not (404: not in the archive, which ends recovery there). */
  private async answer(req: Request): Promise<Response> {
    const name = decodeURIComponent(new URL(req.url).pathname.replace(/^\/wal\//, ""));
    if (!isSegmentName(name) && parseHistory(name) === null)
      return new Response("not a WAL file name\n", { status: 400 });
    let path = "";
    try {
      const got = await this.take(name);
      path = got.path;
      const bytes = await Bun.file(path).bytes();
      this.options.onFile?.({ name, from: got.from, staged: got.staged ?? false });
      await this.followed(name);
      return new Response(bytes);
    } catch (e) {
      return new Response(`${messageOf(e)}\n`, { status: notFound(e) ? 404 : 500 });
    } finally {
      if (path) await this.removeFile(path);
    }
  }

  /** Fetch `name` into a scratch file of ours, with every check fetchWal makes. */
  private async get(name: string): Promise<Got> {
    const tmp = join(this.options.scratch, `wal-${++this.fetches}`);
    try {
      const got = await fetchWal(this.options.config, name, tmp, this.options.store, {
        durable: false,
        allowUnencrypted: this.options.allowUnencrypted,
      });
      return { path: tmp, from: got.record?.kind === "partial" ? "partial" : got.from };
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** Start fetching ahead until AHEAD segments are staged or on their way. */
  private fill(): void {
    while (!this.stopped && this.next && this.staged.size + this.fetching.size < AHEAD) {
      const { timeline, segno } = this.next;
      const name = segmentName(timeline, segno, this.options.segmentBytes);
      this.next = { timeline, segno: segno + 1n };
      if (this.staged.has(name) || this.fetching.has(name)) continue;
      const done = this.stageOne(name, timeline, segno, this.epoch)
        // A segment not staged is asked for over the socket, where a real problem with it is the
        // server's answer: only the reason it was not staged ahead is lost, and it is logged.
        .catch((e) => this.log({ level: "warn", msg: "pitr: staging a WAL segment failed", name, error: messageOf(e) }))
        .finally(() => {
          this.fetching.delete(name);
          this.fill();
        });
      this.fetching.set(name, done);
    }
  }

  /** Fetch one segment and rename it into the stage, unless staging moved elsewhere (`forEpoch` is stale) meanwhile. */
  private async stageOne(name: string, timeline: number, segno: bigint, forEpoch: number): Promise<void> {
    const got = await this.get(name).catch((e) => {
      // Not found is the end of the archive, where staging stops by design; anything else is logged.
      if (!notFound(e))
        this.log({ level: "warn", msg: "pitr: fetching a WAL segment ahead failed", name, error: messageOf(e) });
      return null;
    });
    const sealed = got?.from === "local" || got?.from === "offsite";
    // Past the end of what is sealed: the socket takes it from here, until the server asks there.
    if (!sealed && forEpoch === this.epoch) this.next = null;
    if (!got) return;
    try {
      if (this.stopped || !sealed || forEpoch !== this.epoch) return;
      // The server must be able to read what it moves in: a file it could not is not staged.
      const { stage } = this.options;
      if (stage.uid !== undefined) await chown(got.path, stage.uid, stage.gid!);
      if (this.stopped || forEpoch !== this.epoch) return;
      await rename(got.path, join(stage.dir, name));
      this.staged.set(name, { segno, timeline, from: got.from });
    } finally {
      await this.removeFile(got.path);
    }
  }

  /** A staged segment restore_command moved away was consumed: count it, stage the next. */
  private async collect(): Promise<void> {
    for (const [name, s] of this.staged) {
      if (await this.stillStaged(name, s)) continue;
      if (this.staged.get(name) !== s) continue; // dropped meanwhile by followed(): not consumed
      this.staged.delete(name);
      this.options.onFile?.({ name, from: s.from, staged: true });
    }
    this.fill();
  }

  /** Whether `name` is still in the stage; one that cannot be checked counts as still there (not consumed). */
  private async stillStaged(name: string, s: Staged): Promise<boolean> {
    try {
      return await Bun.file(join(this.options.stage.dir, name)).exists();
    } catch (e) {
      if (!s.checkFailed)
        this.log({ level: "warn", msg: "pitr: checking a staged WAL segment failed", name, error: messageOf(e) });
      s.checkFailed = true;
      return true;
    }
  }

  /** The server asked the socket for `name`: staging follows it, and what it passed is dropped. */
  private async followed(name: string): Promise<void> {
    const seg = parseSegment(name, this.options.segmentBytes);
    if (!seg) return;
    for (const [staleName, s] of this.staged) {
      if (s.timeline !== seg.timeline || s.segno <= seg.segno) {
        this.staged.delete(staleName);
        await this.removeFile(join(this.options.stage.dir, staleName));
      }
    }
    if (!this.next || this.next.timeline !== seg.timeline || this.next.segno <= seg.segno) {
      this.next = { timeline: seg.timeline, segno: seg.segno + 1n };
      this.epoch++;
    }
    this.fill();
  }

  /** Over the socket: a segment being staged is waited for and taken from the stage, not fetched twice. */
  private async take(name: string): Promise<Got> {
    await this.fetching.get(name);
    const s = this.staged.get(name);
    if (s) {
      this.staged.delete(name);
      const path = join(this.options.scratch, `wal-${++this.fetches}`);
      if (await this.takeBack(name, path)) {
        // The stage is the server's user's to take from: what we took back must still be our file, not a link it left.
        const st = await lstat(path).catch((e) => {
          this.log({ level: "warn", msg: "pitr: reading a WAL segment taken back failed", name, error: messageOf(e) });
          return null;
        });
        if (st?.isFile()) return { path, from: s.from, staged: true };
        await rm(path, { force: true });
      }
    }
    return this.get(name);
  }

  /** Move a staged segment back out of the stage; false when it is gone (restore_command took it meanwhile). */
  private async takeBack(name: string, to: string): Promise<boolean> {
    try {
      await rename(join(this.options.stage.dir, name), to);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT")
        this.log({ level: "warn", msg: "pitr: taking a staged WAL segment back failed", name, error: messageOf(e) });
      return false;
    }
  }

  /** Remove a file of ours; one that cannot be goes with the instance's folder, and is logged. */
  private async removeFile(path: string): Promise<void> {
    await rm(path, { force: true }).catch((e) =>
      this.log({ level: "warn", msg: "pitr: removing a WAL file failed", path, error: messageOf(e) }),
    );
  }
}
