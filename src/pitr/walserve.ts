import { chmod, mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../config.ts";
import { ShinkeiError } from "../errors.ts";
import type { BackupStore } from "../backup/stores/store.ts";
import { fetchWal } from "../wal/fetch.ts";
import { isSegmentName, parseHistory, parseSegment, segmentName } from "../wal/segments.ts";

export type Served = { name: string; from: "local" | "offsite" | "receiving" | "partial" };

/**
 * restore_command for a scratch instance: `shinkei pitr wal-fetch --socket PATH %f %p`. The server
 * runs it as its own OS user, which may read neither BACKUP_DIR nor the keys; so the shinkei
 * process that runs the recovery serves the WAL over a unix socket in the instance's own folder,
 * after every check fetchWal makes, and no secret reaches the instance's files.
 * fetchWal serves a segment never archived whole from its partial (the one being received, or a
 * sealed copy), under the segment's name: recovery to a target inside it replays what it holds.
 */
export function serveWal(options: { config: Config; store?: BackupStore; socket: string; scratch: string; segmentBytes: number; onFile?: (f: Served) => void }) {
  const { config, store, scratch } = options;
  let n = 0;
  async function get(name: string): Promise<{ path: string; from: Served["from"] }> {
    const tmp = join(scratch, `wal-${++n}`);
    const got = await fetchWal(config, name, tmp, store, { durable: false });
    return { path: tmp, from: got.record?.kind === "partial" ? "partial" : got.from };
  }
  // restore_command asks for one segment at a time; fetching, checking and unpacking the next
  // ones while the server replays this one keeps the replay from waiting on us. Only sealed
  // segments are taken ahead: the one being received may still grow.
  const AHEAD = 2;
  const ahead = new Map<string, Promise<{ path: string; from: Served["from"] }>>();
  function prefetchAfter(name: string) {
    const seg = parseSegment(name, options.segmentBytes);
    if (!seg) return;
    for (let i = 1n; i <= BigInt(AHEAD); i++) {
      const next = segmentName(seg.timeline, seg.segno + i, options.segmentBytes);
      if (ahead.has(next)) continue;
      const p = get(next);
      p.catch(() => {});
      ahead.set(next, p);
    }
  }
  async function take(name: string): Promise<{ path: string; from: Served["from"] }> {
    const early = ahead.get(name);
    ahead.delete(name);
    const got = early ? await early.catch(() => null) : null;
    if (got && (got.from === "local" || got.from === "offsite")) return got;
    if (got) await rm(got.path, { force: true });
    return get(name);
  }
  const server = Bun.serve({
    unix: options.socket,
    async fetch(req) {
      const name = decodeURIComponent(new URL(req.url).pathname.replace(/^\/wal\//, ""));
      if (!isSegmentName(name) && parseHistory(name) === null) return new Response("not a WAL file name\n", { status: 400 });
      let path = "";
      try {
        const got = await take(name);
        path = got.path;
        const bytes = await Bun.file(path).bytes();
        options.onFile?.({ name, from: got.from });
        prefetchAfter(name);
        return new Response(bytes);
      } catch (e) {
        const notFound = e instanceof ShinkeiError && (e.code === "NOT_FOUND" || e.code === "USAGE");
        return new Response(`${(e as Error).message}\n`, { status: notFound ? 404 : 500 });
      } finally {
        if (path) await rm(path, { force: true });
      }
    },
  });
  return {
    async ready() {
      await mkdir(scratch, { recursive: true, mode: 0o700 });
      // The socket's folder is the instance's (mode 0700): only its OS user reaches it.
      await chmod(options.socket, 0o666);
    },
    stop: () => server.stop(true),
  };
}

/** The restore_command side: ask the recovering shinkei for `name`, write it to `target` whole or not at all. */
export async function fetchViaSocket(socket: string, name: string, target: string): Promise<void> {
  let res: Response;
  try {
    res = await fetch(`http://shinkei/wal/${encodeURIComponent(name)}`, { unix: socket });
  } catch (e) {
    // Not an answer about the archive: abort recovery (exit 126) rather than end it here.
    throw new ShinkeiError("RECOVERY_FAILED", `the shinkei process recovering this instance does not answer on ${socket}: ${(e as Error).message}`);
  }
  if (!res.ok) {
    const text = (await res.text()).trim();
    throw new ShinkeiError(res.status === 404 ? "NOT_FOUND" : "BACKUP_CORRUPT", text || `fetching ${name} failed (${res.status})`);
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
