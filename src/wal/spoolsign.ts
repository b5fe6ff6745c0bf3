import { mkdir, open, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Log } from "../log.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { signParts } from "../backup/manifest.ts";
import { parseLsn, parseSegment, segmentName, segnoOf } from "./segments.ts";
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
 * - the `.partial` being received, as far as its pages are complete. pg_receivewal writes the
 *   stream in order into a file padded with zeros, and every WAL page starts with a non-zero
 *   header: a page is complete once the next one has begun, and never changes after. So a running
 *   SHA-256 goes over each page once, and the signature covers all complete pages: recovery to
 *   the latest moment replays up to them (at most a page and one pass behind the receiver).
 * - a segment when it is finished: the running hash of its pages, plus the rest, read then. A
 *   segment swapped in place of the one that was received does not match the pages signed before.
 *
 * The running state lives in memory; after a restart it is taken up again from the `.partial`'s
 * signature, once the bytes it covers hash as it says. What the receiver wrote between the last
 * pass and a finish is signed as it is found (the only bytes taken on trust: one pass's worth).
 */
export class SpoolSigner {
  private tracked = new Map<string, { bytes: number; pageBytes: number; hash: Bun.CryptoHasher }>();
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
      if (!(await readSpoolSignature(this.o.backupDir, name, this.o.key))) await this.finish(name);
    }
    for (const name of names.filter((n) => n.endsWith(".partial")).sort()) {
      const segment = name.slice(0, -".partial".length);
      if (parseSegment(segment, this.o.segmentBytes)) await this.advance(segment);
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
  private async state(segment: string, file: string) {
    const known = this.tracked.get(segment);
    if (known) return known;
    const sig = await readSpoolSignature(this.o.backupDir, `${segment}.partial`, this.o.key);
    if (sig) {
      const hash = new Bun.CryptoHasher("sha256");
      const read = await readRange(file, 0, sig.bytes, hash);
      if (read === sig.bytes && hash.copy().digest("hex") === sig.sha256) {
        const s = { bytes: sig.bytes, pageBytes: await pageBytesOf(file), hash };
        this.tracked.set(segment, s);
        return s;
      }
      this.once(segment, "a spool file no longer matches the pages signed for it: it is not signed further");
      return null;
    }
    if (!this.expected.has(segment)) {
      const seen = (this.unknown.get(segment) ?? 0) + 1;
      this.unknown.set(segment, seen);
      if (seen >= 3) this.once(segment, "a spool file the WAL receiver was not writing is not signed (planted?)");
      return null;
    }
    const s = { bytes: 0, pageBytes: 0, hash: new Bun.CryptoHasher("sha256") };
    this.tracked.set(segment, s);
    return s;
  }

  /** Sign the complete pages of `segment`'s `.partial`. */
  private async advance(segment: string) {
    const file = join(this.o.spool, `${segment}.partial`);
    const s = await this.state(segment, file);
    if (!s) return;
    s.pageBytes ||= await pageBytesOf(file);
    if (!s.pageBytes) return; // its first page is not written yet
    const size = (await stat(file).catch(() => null))?.size ?? 0;
    const f = await open(file, "r");
    const before = s.bytes;
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
    } finally {
      await f.close();
    }
    if (s.bytes !== before) await this.sign(`${segment}.partial`, s.bytes, s.hash.copy().digest("hex"));
  }

  /** `segment` was finished (renamed from its `.partial`): sign it whole, and expect the next one. */
  private async finish(segment: string) {
    const file = join(this.o.spool, segment);
    const s = await this.state(segment, file);
    if (!s) return;
    const size = (await stat(file).catch(() => null))?.size ?? 0;
    if (size !== this.o.segmentBytes) return;
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
