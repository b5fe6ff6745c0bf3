import { open, readdir, rm, stat, statfs, truncate } from "node:fs/promises";
import { join } from "node:path";
import type { Log } from "../log.ts";
import { parseSegment } from "./segments.ts";

/**
 * The states pg_receivewal's own files can be left in, and what makes each usable again.
 *
 * pg_receivewal creates a segment's `.partial` and fills it with zeros to the whole segment size
 * before it writes any WAL into it; when it starts again it accepts a `.partial` only if it is empty
 * or whole ("has N bytes, should be 0 or 16777216"). A full disk stops it while it pads, leaving a
 * short file of zeros that it then refuses on every restart, while the slot keeps WAL on the server
 * until it is lost.
 */

/** Bytes free to us (not root's reserve) on the file system holding `dir`; Infinity when unknown. */
export async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir).catch(() => null);
  return s ? s.bavail * s.bsize : Infinity;
}

/**
 * Whether a file holds anything but zeros. Received WAL starts every page with a non-zero header,
 * so a file of zeros holds none: it is padding that never got WAL written into it.
 */
export async function holdsData(path: string): Promise<boolean> {
  const f = await open(path, "r");
  try {
    const buf = Buffer.alloc(1 << 20);
    for (;;) {
      const { bytesRead } = await f.read(buf, 0, buf.length, null);
      if (bytesRead === 0) return false;
      for (let i = 0; i < bytesRead; i++) if (buf[i] !== 0) return true;
    }
  } finally {
    await f.close();
  }
}

export type Refused = { name: string; sizeBytes: number };

/** `.partial` segments pg_receivewal would refuse to resume from: neither empty nor whole. */
export async function refusedPartials(spool: string, segmentBytes: number): Promise<Refused[]> {
  const out: Refused[] = [];
  for (const name of await readdir(spool).catch(() => [] as string[])) {
    if (!name.endsWith(".partial") || !parseSegment(name.slice(0, -".partial".length), segmentBytes)) continue;
    const st = await stat(join(spool, name)).catch(() => null);
    if (st?.isFile() && st.size !== 0 && st.size !== segmentBytes) out.push({ name, sizeBytes: st.size });
  }
  return out;
}

/**
 * Make every refused `.partial` one pg_receivewal resumes from. It always resumes at the start of
 * the newest `.partial` (or, with none, at the start of the segment holding the slot's restart
 * position), so the bytes a file holds are asked of the server again either way:
 * - only zeros (the padding a full disk cut short): it holds no WAL, and goes;
 * - received WAL in a short file: padded with zeros to the whole size, never deleted. The server
 *   sends the segment again from its start over the same bytes; if it no longer has them, the
 *   receiver's lost-WAL path keeps this file as the segment's partial.
 */
export async function repairSpool(spool: string, segmentBytes: number, log: Log): Promise<Refused[]> {
  const refused = await refusedPartials(spool, segmentBytes);
  for (const r of refused) {
    const path = join(spool, r.name);
    if (await holdsData(path)) {
      await truncate(path, segmentBytes);
      log({
        level: "warn",
        msg: "wal partial padded: pg_receivewal refuses a short one; the server sends the segment again from its start",
        file: r.name,
        sizeBytes: r.sizeBytes,
        segmentBytes,
      });
    } else {
      await rm(path, { force: true });
      log({
        level: "warn",
        msg:
          "wal partial removed: zeros only, the padding of a segment that was never written (a full disk " +
          "stops pg_receivewal while it pads); the server sends the segment from the slot's position",
        file: r.name,
        sizeBytes: r.sizeBytes,
      });
    }
  }
  return refused;
}
