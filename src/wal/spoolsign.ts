import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Log } from "../log.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { signParts } from "../backup/manifest.ts";
import { isSegmentName, parseLsn, parseSegment, segmentName, segnoOf } from "./segments.ts";
import {
  readSpoolSignature,
  spoolSignatureDir,
  spoolSignatureParts,
  spoolSignaturePath,
  type SpoolSignature,
} from "./trust.ts";

/**
 * Signs the spool's files as the receiver writes them (see trust.ts), on every pass of the archiver:
 *
 * - only segments the receiver is known to write: the one it said it starts streaming at (or
 *   switched timeline at), and each next one after a segment it finished. A file of any other
 *   name in the spool is never signed, so never served or sealed: it was not received.
 * - the `.partial` being received, up to its last non-zero byte. pg_receivewal writes the stream
 *   in order, each byte once, into a file padded with zeros: what comes before the last non-zero
 *   byte never changes again (and zeros it wrote after it are the zeros served). Every WAL page
 *   starts with a non-zero header, so a page is complete once the next one has begun: a running
 *   SHA-256 goes over each complete page once, and each pass adds the begun page's bytes to a
 *   copy of it. Recovery to the latest moment replays up to what the last pass saw.
 * - a segment when it is finished: the running hash of its pages, plus the rest, read then. A
 *   segment swapped in place of the one that was received does not match the pages signed before.
 *
 * The running state lives in memory; after a restart it is taken up again from the `.partial`'s
 * signature, once the bytes it covers hash as it says. What the receiver wrote between the last
 * pass and a finish is signed as it is found (the only bytes taken on trust: one pass's worth).
 */
export class SpoolSigner {
  /** By segment: the complete pages hashed so far (`bytes`), and the length signed last (-1: none yet). */
  private tracked = new Map<string, Tracked>();
  /** Segment names the receiver writes next (by its own word, or as the one after it finished one). */
  private expected = new Set<string>();
  private said = new Set<string>();
  /** Passes a file has been seen without being expected: the receiver's own word may come a moment late. */
  private unknown = new Map<string, number>();

  constructor(private o: { backupDir: string; spool: string; key: string; segmentBytes: number; log: Log }) {}

  /** pg_receivewal said it starts streaming (or switched timeline) at `lsn` on `timeline`. */
  expect(lsn: string, timeline: number) {
    this.expected.add(segmentName(timeline, segnoOf(parseLsn(lsn), this.o.segmentBytes), this.o.segmentBytes));
  }

  /** Sign what the receiver added since the last pass; forget signatures of files that are gone. */
  async pass(): Promise<void> {
    await mkdir(spoolSignatureDir(this.o.backupDir), { recursive: true, mode: 0o700 });
    const names = await readdir(this.o.spool).catch(() => [] as string[]);
    const present = new Set(names);
    for (const name of names.filter((n) => parseSegment(n, this.o.segmentBytes)).sort()) {
      if (!(await readSpoolSignature(this.o.backupDir, name, this.o.key))) await gone(this.finish(name));
    }
    for (const name of names.filter((n) => n.endsWith(".partial")).sort()) {
      const segment = name.slice(0, -".partial".length);
      // A partial finished (renamed) while it was read is signed whole on the next pass.
      if (parseSegment(segment, this.o.segmentBytes)) await gone(this.advance(segment));
    }
    for (const s of await readdir(spoolSignatureDir(this.o.backupDir)).catch(() => [] as string[])) {
      const name = s.replace(/\.json$/, "");
      if (s.endsWith(".json") && !present.has(name)) {
        await rm(join(spoolSignatureDir(this.o.backupDir), s), { force: true });
        if (name.endsWith(".partial")) this.tracked.delete(name.slice(0, -".partial".length));
      }
    }
  }

  /** The running hash of `segment`, taken up from its `.partial`'s signature, or begun for one expected. */
  private async state(segment: string, file: string): Promise<Tracked | null> {
    const known = this.tracked.get(segment);
    if (known) return known;
    const sig = await readSpoolSignature(this.o.backupDir, `${segment}.partial`, this.o.key);
    if (sig) {
      const pageBytes = sig.bytes > 0 ? await pageBytesOf(file) : 0;
      const aligned = pageBytes ? Math.floor(sig.bytes / pageBytes) * pageBytes : 0;
      const hash = new Bun.CryptoHasher("sha256");
      const pages = await readRange(file, 0, aligned, hash);
      const check = hash.copy();
      const rest = await readRange(file, aligned, sig.bytes, check);
      if (
        (pageBytes || sig.bytes === 0) &&
        pages === aligned &&
        rest === sig.bytes - aligned &&
        check.digest("hex") === sig.sha256
      ) {
        const s = { bytes: aligned, pageBytes, hash, signed: sig.bytes, signedSha: sig.sha256 };
        this.tracked.set(segment, s);
        return s;
      }
      this.once(segment, "a spool file no longer matches what was signed of it: it is not signed further");
      return null;
    }
    if (!this.expected.has(segment)) {
      const seen = (this.unknown.get(segment) ?? 0) + 1;
      this.unknown.set(segment, seen);
      if (seen >= 3) this.once(segment, "a spool file the WAL receiver was not writing is not signed (planted?)");
      return null;
    }
    const s = { bytes: 0, pageBytes: 0, hash: new Bun.CryptoHasher("sha256"), signed: -1 };
    this.tracked.set(segment, s);
    return s;
  }

  /** Sign `segment`'s `.partial` up to its last non-zero byte. */
  private async advance(segment: string) {
    const file = join(this.o.spool, `${segment}.partial`);
    const s = await this.state(segment, file);
    if (!s) return;
    s.pageBytes ||= await pageBytesOf(file);
    let begun = Buffer.alloc(0);
    if (s.pageBytes) {
      const size = (await stat(file).catch(() => null))?.size ?? 0;
      const f = await open(file, "r");
      try {
        const header = Buffer.alloc(4);
        const page = Buffer.alloc(s.pageBytes);
        // Page p is complete once page p + 1 has begun (its header is never zero).
        while (s.bytes + 2 * s.pageBytes <= size) {
          await f.read(header, 0, 4, s.bytes + s.pageBytes);
          if (header.readUInt32LE(0) === 0) break;
          const { bytesRead } = await f.read(page, 0, s.pageBytes, s.bytes);
          if (bytesRead !== s.pageBytes) break;
          s.hash.update(page);
          s.bytes += s.pageBytes;
        }
        // The begun page, up to its last non-zero byte.
        const { bytesRead } = await f.read(page, 0, Math.min(s.pageBytes, size - s.bytes), s.bytes);
        let end = bytesRead;
        while (end > 0 && page[end - 1] === 0) end--;
        begun = Buffer.from(page.subarray(0, end));
      } finally {
        await f.close();
      }
    }
    const bytes = s.bytes + begun.length;
    if (bytes === s.signed) return;
    const sha256 = s.hash.copy().update(begun).digest("hex");
    await this.sign(`${segment}.partial`, bytes, sha256);
    s.signed = bytes;
    s.signedSha = sha256;
  }

  /** `segment` was finished (renamed from its `.partial`): sign it whole, and expect the next one. */
  private async finish(segment: string) {
    const file = join(this.o.spool, segment);
    const s = await this.state(segment, file);
    if (!s) return;
    const size = (await stat(file).catch(() => null))?.size ?? 0;
    if (size !== this.o.segmentBytes) return;
    // What was signed of its begun page must be there too: the rest of it is taken as found.
    if (s.signed > s.bytes) {
      const begun = s.hash.copy();
      await readRange(file, s.bytes, s.signed, begun);
      if (begun.digest("hex") !== s.signedSha) {
        this.tracked.delete(segment);
        return this.once(segment, "a finished spool segment does not match what was signed of it: it is not signed");
      }
    }
    if ((await readRange(file, s.bytes, size, s.hash)) !== size - s.bytes) return;
    await this.sign(segment, size, s.hash.digest("hex"));
    this.tracked.delete(segment);
    await rm(spoolSignaturePath(this.o.backupDir, `${segment}.partial`), { force: true });
    const seg = parseSegment(segment, this.o.segmentBytes)!;
    this.expected.delete(segment);
    this.expected.add(segmentName(seg.timeline, seg.segno + 1n, this.o.segmentBytes));
  }

  private async sign(name: string, bytes: number, sha256: string) {
    const s: SpoolSignature = {
      spoolSignatureVersion: 1,
      name,
      bytes,
      sha256,
      signature: signParts(spoolSignatureParts({ name, bytes, sha256 }), this.o.key),
    };
    await writeFileAtomic(spoolSignaturePath(this.o.backupDir, name), `${JSON.stringify(s)}\n`);
  }

  private once(segment: string, msg: string) {
    if (this.said.has(segment)) return;
    this.said.add(segment);
    this.o.log({ level: "error", msg, file: segment });
  }
}

/** A file of the spool that went away under us (finished, sealed) is no error: it is seen again, or gone. */
async function gone(work: Promise<void>): Promise<void> {
  await work.catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "ENOENT") throw e;
  });
}

/** Hash bytes [from, to) of `file` into `hash`; how many were read. */
async function readRange(file: string, from: number, to: number, hash: Bun.CryptoHasher): Promise<number> {
  const f = await open(file, "r");
  try {
    const buf = Buffer.alloc(1 << 20);
    let at = from;
    while (at < to) {
      const { bytesRead } = await f.read(buf, 0, Math.min(buf.length, to - at), at);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
    return at - from;
  } finally {
    await f.close();
  }
}

/**
 * The WAL page size the segment's first page (its long header) gives; 0 while it is not written.
 * XLogLongPageHeaderData: the short header (24 bytes), xlp_sysid (8), xlp_seg_size (4), xlp_xlog_blcksz (4).
 */
async function pageBytesOf(file: string): Promise<number> {
  const f = await open(file, "r");
  try {
    const b = Buffer.alloc(40);
    const { bytesRead } = await f.read(b, 0, 40, 0);
    if (bytesRead < 40 || b.readUInt16LE(0) === 0) return 0;
    const size = b.readUInt32LE(36);
    return size >= 1024 && size <= 65536 && (size & (size - 1)) === 0 ? size : 0;
  } finally {
    await f.close();
  }
}

type Tracked = { bytes: number; pageBytes: number; hash: Bun.CryptoHasher; signed: number; signedSha?: string };

/**
 * Before the receiver (re)starts, with a key: a `.partial` in the spool that the WAL service did
 * not sign, or whose bytes no longer match its signature, is set aside (renamed, never deleted).
 * pg_receivewal resumes from the newest `.partial` it finds and would stream on into it, and the
 * signer would then take its bytes as received; set aside, the receiver starts again at the slot's
 * position, from the start of that segment, which the server still holds for the slot. Left there,
 * a `.partial` planted while the service was down would be signed as the receiver's own.
 */
export async function setAsideUnsigned(backupDir: string, spool: string, key: string, log: Log): Promise<string[]> {
  const aside: string[] = [];
  for (const name of await readdir(spool).catch(() => [] as string[])) {
    if (!name.endsWith(".partial") || !isSegmentName(name.slice(0, -".partial".length))) continue;
    const path = join(spool, name);
    const sig = await readSpoolSignature(backupDir, name, key);
    const hash = new Bun.CryptoHasher("sha256");
    const matches =
      sig && (await readRange(path, 0, sig.bytes, hash)) === sig.bytes && hash.digest("hex") === sig.sha256;
    if (matches) continue;
    const to = `${name}.unsigned-${Date.now()}`;
    await rename(path, join(spool, to));
    aside.push(to);
    log({
      level: "error",
      msg:
        (sig
          ? "a partial segment in the spool no longer matches what was signed of it"
          : "a partial segment in the spool that the WAL service did not sign") +
        ": set aside; the receiver fetches the segment again",
      file: name,
      setAsideAs: to,
    });
  }
  return aside;
}
