import { chmod, chown, lstat, mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import type { BackupStore } from "../storage/store.ts";
import { fetchWal } from "../wal/fetch.ts";
import { isSegmentName, parseHistory, parseSegment, segmentName } from "../wal/segments.ts";

/** A WAL file recovery took: where it came from, and whether it was fetched ahead (the stage). */
export type Served = { name: string; from: "local" | "offsite" | "receiving" | "partial"; staged: boolean };

/**
 * What restore_command runs: take the segment from the stage with `mv` (no process of ours, no
 * copy: a rename on the same disk), else ask the recovering shinkei over its socket.
 */
export function restoreCommand(stage: string, client: string[], socket: string): string {
  // Shell quotes; a % in a path is written %% (PostgreSQL substitutes %f, %p and %% there).
  const q = (s: string) => `'${s.replaceAll("'", `'\\''`).replaceAll("%", "%%")}'`;
  return `mv -f ${q(stage)}/%f %p 2>/dev/null || exec ${client.map(q).join(" ")} pitr wal-fetch --socket ${q(socket)} %f %p`;
}

type Got = { path: string; from: Served["from"]; staged?: boolean };

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
export function serveWal(options: {
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
}) {
  const { config, store, scratch, segmentBytes, stage } = options;
  let n = 0;
  async function get(name: string): Promise<Got> {
    const tmp = join(scratch, `wal-${++n}`);
    try {
      const got = await fetchWal(config, name, tmp, store, {
        durable: false,
        allowUnencrypted: options.allowUnencrypted,
      });
      return { path: tmp, from: got.record?.kind === "partial" ? "partial" : got.from };
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  const AHEAD = 3;
  type Staged = { segno: bigint; timeline: number; from: Served["from"] };
  const staged = new Map<string, Staged>();
  /** Segments being fetched for the stage, by name: a socket request for one waits for it. */
  const fetching = new Map<string, Promise<void>>();
  let next: { timeline: number; segno: bigint } | null = null;
  /** Bumped when the server's requests move staging elsewhere: what was fetched for before is dropped. */
  let epoch = 0;
  let stopped = false;
  function fill() {
    while (!stopped && next && staged.size + fetching.size < AHEAD) {
      const { timeline, segno } = next;
      const name = segmentName(timeline, segno, segmentBytes);
      next = { timeline, segno: segno + 1n };
      if (staged.has(name) || fetching.has(name)) continue;
      const done = stageOne(name, timeline, segno, epoch)
        .catch(() => {}) // a segment not staged is asked for over the socket: nothing is lost
        .finally(() => {
          fetching.delete(name);
          fill();
        });
      fetching.set(name, done);
    }
  }
  async function stageOne(name: string, timeline: number, segno: bigint, asked: number) {
    const got = await get(name).catch(() => null);
    const sealed = got?.from === "local" || got?.from === "offsite";
    // Past the end of what is sealed: the socket takes it from here, until the server asks there.
    if (!sealed && asked === epoch) next = null;
    if (!got) return;
    try {
      if (stopped || !sealed || asked !== epoch) return;
      // The server must be able to read what it moves in: a file it could not is not staged.
      if (stage.uid !== undefined) await chown(got.path, stage.uid, stage.gid!);
      if (stopped || asked !== epoch) return;
      await rename(got.path, join(stage.dir, name));
      staged.set(name, { segno, timeline, from: got.from });
    } finally {
      await rm(got.path, { force: true }).catch(() => {});
    }
  }
  /** A staged segment restore_command moved away was consumed: count it, stage the next. */
  async function collect() {
    for (const [name, s] of staged) {
      if (
        await Bun.file(join(stage.dir, name))
          .exists()
          .catch(() => true)
      )
        continue;
      if (staged.get(name) !== s) continue; // dropped meanwhile by followed(): not consumed
      staged.delete(name);
      options.onFile?.({ name, from: s.from, staged: true });
    }
    fill();
  }
  /** The server asked the socket for `name`: staging follows it, and what it passed is dropped. */
  async function followed(name: string) {
    const seg = parseSegment(name, segmentBytes);
    if (!seg) return;
    for (const [staleName, s] of staged) {
      if (s.timeline !== seg.timeline || s.segno <= seg.segno) {
        staged.delete(staleName);
        await rm(join(stage.dir, staleName), { force: true }).catch(() => {});
      }
    }
    if (!next || next.timeline !== seg.timeline || next.segno <= seg.segno) {
      next = { timeline: seg.timeline, segno: seg.segno + 1n };
      epoch++;
    }
    fill();
  }
  /** Over the socket: a segment being staged is waited for and taken from the stage, not fetched twice. */
  async function take(name: string): Promise<Got> {
    await fetching.get(name);
    const s = staged.get(name);
    if (s) {
      staged.delete(name);
      const path = join(scratch, `wal-${++n}`);
      if (
        await rename(join(stage.dir, name), path).then(
          () => true,
          () => false,
        )
      ) {
        // The stage is the server's user's to take from: what we took back must still be our file, not a link it left.
        if ((await lstat(path).catch(() => null))?.isFile()) return { path, from: s.from, staged: true };
        await rm(path, { force: true });
      }
    }
    return get(name);
  }

  let watch: Timer | undefined;
  let looking = false;
  const server = Bun.serve({
    unix: options.socket,
    async fetch(req) {
      const name = decodeURIComponent(new URL(req.url).pathname.replace(/^\/wal\//, ""));
      if (!isSegmentName(name) && parseHistory(name) === null)
        return new Response("not a WAL file name\n", { status: 400 });
      let path = "";
      try {
        const got = await take(name);
        path = got.path;
        const bytes = await Bun.file(path).bytes();
        options.onFile?.({ name, from: got.from, staged: got.staged ?? false });
        await followed(name);
        return new Response(bytes);
      } catch (e) {
        const notFound = e instanceof ShinkeiError && (e.code === "NOT_FOUND" || e.code === "USAGE");
        return new Response(`${(e as Error).message}\n`, { status: notFound ? 404 : 500 });
      } finally {
        if (path) await rm(path, { force: true }).catch(() => {});
      }
    },
  });
  return {
    async ready() {
      await mkdir(scratch, { recursive: true, mode: 0o700 });
      // The socket's folder is ours, and only the server's group may pass (createInstanceFolder).
      await chmod(options.socket, 0o666);
      watch = setInterval(() => {
        if (looking) return;
        looking = true;
        void collect().finally(() => (looking = false));
      }, 20);
      const first = options.first ? parseSegment(options.first, segmentBytes) : null;
      if (first) next = { timeline: first.timeline, segno: first.segno };
      fill();
    },
    /** Stop serving, and wait for the fetches under way; what is left in the stage goes with the instance's folder. */
    async stop() {
      stopped = true;
      clearInterval(watch);
      server.stop(true);
      await Promise.allSettled([...fetching.values()]);
    },
  };
}

/** The restore_command side: ask the recovering shinkei for `name`, write it to `target` whole or not at all. */
export async function fetchViaSocket(socket: string, name: string, target: string): Promise<void> {
  let res: Response;
  try {
    res = await fetch(`http://shinkei/wal/${encodeURIComponent(name)}`, { unix: socket });
  } catch (e) {
    // Not an answer about the archive: abort recovery (exit 126) rather than end it here.
    throw new ShinkeiError(
      "RECOVERY_FAILED",
      `the shinkei process recovering this instance does not answer on ${socket}: ${(e as Error).message}`,
    );
  }
  if (!res.ok) {
    const text = (await res.text()).trim();
    throw new ShinkeiError(
      res.status === 404 ? "NOT_FOUND" : "BACKUP_CORRUPT",
      text || `fetching ${name} failed (${res.status})`,
    );
  }
  // Like cp in restore_command, no fsync: a server that crashes mid-recovery asks for the file again.
  const partial = `${target}.shinkei-fetch`;
  try {
    await Bun.write(partial, await res.arrayBuffer());
    await rename(partial, target);
  } finally {
    await rm(partial, { force: true });
  }
}
