import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Log } from "../log.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { signParts } from "../backup/manifest.ts";
import { isSegmentName, parseHistory, parseLsn, parseSegment, segmentName, segmentStart, segnoOf } from "./segments.ts";
import {
  readSpoolSignature,
  spoolSignatureDir,
  spoolSignatureParts,
  spoolSignaturePath,
  type SpoolSignature,
} from "./trust.ts";

/** Bytes of a segment the running hash takes at once: what is re-read and re-checked on each pass is less. */
const BLOCK = 64 * 1024;

/**
 * Signs the spool's files as the receiver writes them (see trust.ts), on every pass of the archiver,
 * never past what the server says the receiver wrote (`position`: its write_lsn in
 * pg_stat_replication). Bytes in the spool beyond it were not received, whoever put them there.
 *
 * - only segments the receiver is known to write: the one it said it starts streaming at (or
 *   switched timeline at), and each next one after a segment it finished. A file of any other
 *   name in the spool is never signed, so never served or sealed: it was not received.
 * - the `.partial` being received, up to the receiver's position in it. A running SHA-256 goes
 *   over each whole block below it once; the bytes signed after the last whole block are read
 *   again on every pass and must hash as they were signed, else the file is refused (and named).
 * - a segment when it is finished, once the receiver's position is past its end: the running hash,
 *   the signed bytes after it checked again, plus the rest, read then. A segment swapped in place of
 *   the one that was received does not match the bytes signed before.
 * - a timeline history file, only for the timeline the receiver said it starts on or switched to,
 *   and naming the timeline it switched from as its parent.
 * - an older timeline's last segment (a partial for good) only up to where the receiver switched.
 *
 * The running state lives in memory; after a restart it is taken up again from the `.partial`'s
 * signature, once the bytes it covers hash as it says. The bytes the receiver wrote between two
 * passes are taken as found at the next one: the only ones taken on trust.
 */
export class SpoolSigner {
  /** By segment: the whole blocks hashed so far (`bytes`), and the length signed last (-1: none yet). */
  private tracked = new Map<string, Tracked>();
  /** Segment names the receiver writes next (by its own word, or as the one after it finished one). */
  private expected = new Set<string>();
  /** Timelines the receiver said it streams, with the one it switched from (history files it may write). */
  private announced = new Map<number, number | undefined>();
  /** Where each timeline the receiver left ended (its "switched to timeline N at" position). */
  private ends = new Map<number, bigint>();
  /** The timeline the receiver streams now, by its own word (undefined until it has said). */
  private current: number | undefined;
  /** The receiver's position this pass (null: not known, nothing is signed further). */
  private at: bigint | null = null;
  private said = new Set<string>();
  /** Passes a file has been seen without being expected: the receiver's own word may come a moment late. */
  private unknown = new Map<string, number>();

  constructor(
    private o: {
      backupDir: string;
      spool: string;
      key: string;
      segmentBytes: number;
      log: Log;
      /** What the server says the receiver has written (an LSN), or null when it cannot tell. */
      position: () => Promise<bigint | null>;
    },
  ) {}

  /** The timeline the receiver streams, by its own word. */
  get timeline(): number | undefined {
    return this.current;
  }

  /** pg_receivewal said it starts streaming (or switched timeline) at `lsn` on `timeline`. */
  expect(lsn: string, timeline: number) {
    const at = parseLsn(lsn);
    if (this.current !== undefined && timeline > this.current) {
      this.ends.set(this.current, at);
      this.announced.set(timeline, this.current);
    } else if (!this.announced.has(timeline)) this.announced.set(timeline, undefined);
    this.current = timeline;
    this.expected.add(segmentName(timeline, segnoOf(at, this.o.segmentBytes), this.o.segmentBytes));
  }

  /** Sign what the receiver added since the last pass; forget signatures of files that are gone. */
  async pass(): Promise<void> {
    await mkdir(spoolSignatureDir(this.o.backupDir), { recursive: true, mode: 0o700 });
    this.at = await this.o.position();
    const names = await readdir(this.o.spool).catch(() => [] as string[]);
    const present = new Set(names);
    for (const name of names.filter((n) => parseHistory(n) !== null)) {
      if (!(await readSpoolSignature(this.o.backupDir, name, this.o.key))) await gone(this.history(name));
    }
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
      // A partial renamed to its finished name keeps its signature until the finished one is signed:
      // the finished file must still hold what was signed of it.
      const finished = name.endsWith(".partial") && present.has(name.slice(0, -".partial".length));
      if (s.endsWith(".json") && !present.has(name) && !finished) {
        await rm(join(spoolSignatureDir(this.o.backupDir), s), { force: true });
        if (name.endsWith(".partial")) this.tracked.delete(name.slice(0, -".partial".length));
      }
    }
  }

  /**
   * How many bytes of `segment` the receiver has written, by the server's word: up to its position
   * on the timeline it streams, up to where it switched on one it left; -1 when that is not known.
   */
  private received(segment: string): number {
    const seg = parseSegment(segment, this.o.segmentBytes)!;
    if (this.at === null || this.current === undefined || seg.timeline > this.current) return -1;
    let end = this.at;
    if (seg.timeline < this.current) {
      const left = this.ends.get(seg.timeline);
      if (left === undefined) return -1;
      if (left < end) end = left;
    }
    const n = end - segmentStart(seg.segno, this.o.segmentBytes);
    return n <= 0n ? 0 : n >= BigInt(this.o.segmentBytes) ? this.o.segmentBytes : Number(n);
  }

  /** A history file the receiver announced (a timeline it streams), its parent the one it left: signed whole. */
  private async history(name: string) {
    const timeline = parseHistory(name)!;
    if (!this.announced.has(timeline)) {
      const seen = (this.unknown.get(name) ?? 0) + 1;
      this.unknown.set(name, seen);
      if (seen >= 3)
        this.once(
          name,
          "a timeline history file for a timeline the WAL receiver did not announce is not signed (planted?)",
        );
      return;
    }
    const bytes = await Bun.file(join(this.o.spool, name)).bytes();
    const last = new TextDecoder()
      .decode(bytes)
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"))
      .at(-1);
    const parent = Number(/^(\d+)\s/.exec(last ?? "")?.[1] ?? 0);
    const from = this.announced.get(timeline);
    if (!parent || parent >= timeline || (from !== undefined && parent !== from))
      return this.once(
        name,
        "a timeline history file does not name the timeline the WAL receiver left: it is not signed",
      );
    await this.sign(name, bytes.length, new Bun.CryptoHasher("sha256").update(bytes).digest("hex"));
  }

  /** The running hash of `segment`, taken up from its `.partial`'s signature, or begun for one expected. */
  private async state(segment: string, file: string): Promise<Tracked | null> {
    const known = this.tracked.get(segment);
    if (known) return known.refused ? null : known;
    const sig = await readSpoolSignature(this.o.backupDir, `${segment}.partial`, this.o.key);
    if (sig) {
      const aligned = Math.floor(sig.bytes / BLOCK) * BLOCK;
      const hash = new Bun.CryptoHasher("sha256");
      const blocks = await readRange(file, 0, aligned, hash);
      const check = hash.copy();
      const rest = await readRange(file, aligned, sig.bytes, check);
      if (blocks === aligned && rest === sig.bytes - aligned && check.digest("hex") === sig.sha256) {
        const s = { bytes: aligned, hash, signed: sig.bytes, signedSha: sig.sha256 };
        this.tracked.set(segment, s);
        return s;
      }
      this.refuse(segment, "a spool file no longer matches what was signed of it: it is not signed further");
      return null;
    }
    if (!this.expected.has(segment)) {
      // Named only once the receiver has written into it by the server's word: until then it may
      // be the next one, finished before the one before it is (which waits for the server's report).
      if (this.received(segment) <= 0) return null;
      const seen = (this.unknown.get(segment) ?? 0) + 1;
      this.unknown.set(segment, seen);
      if (seen >= 3) this.once(segment, "a spool file the WAL receiver was not writing is not signed (planted?)");
      return null;
    }
    const s = { bytes: 0, hash: new Bun.CryptoHasher("sha256"), signed: -1 };
    this.tracked.set(segment, s);
    return s;
  }

  /**
   * The bytes of `file` from the last whole block hashed to `to` (at least to what was signed), once
   * the part of them signed before still hashes as it was signed; null (and the file refused) if not.
   */
  private async tail(segment: string, file: string, s: Tracked, to: number): Promise<Buffer | null> {
    const want = Math.max(to, s.signed) - s.bytes;
    const buf = Buffer.alloc(Math.max(0, want));
    const f = await open(file, "r");
    let got = 0;
    try {
      while (got < want) {
        const { bytesRead } = await f.read(buf, got, want - got, s.bytes + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
    } finally {
      await f.close();
    }
    if (s.signed > s.bytes) {
      const check = s.hash.copy();
      check.update(buf.subarray(0, s.signed - s.bytes));
      if (got < s.signed - s.bytes || check.digest("hex") !== s.signedSha) {
        this.refuse(segment, "a spool file's signed bytes were rewritten: it is not signed further");
        return null;
      }
    }
    return buf.subarray(0, got);
  }

  /** Sign `segment`'s `.partial` up to the receiver's position in it. */
  private async advance(segment: string) {
    const file = join(this.o.spool, `${segment}.partial`);
    const s = await this.state(segment, file);
    if (!s) return;
    const received = this.received(segment);
    const size = (await stat(file).catch(() => null))?.size ?? 0;
    const to = Math.min(received, size);
    const bytes = await this.tail(segment, file, s, to);
    if (!bytes || to <= s.signed) return;
    // Whole blocks below the receiver's position join the running hash once.
    const mine = bytes.subarray(0, to - s.bytes);
    let used = 0;
    while (used + BLOCK <= mine.length) {
      s.hash.update(mine.subarray(used, used + BLOCK));
      used += BLOCK;
    }
    s.bytes += used;
    const sha256 = s.hash.copy().update(mine.subarray(used)).digest("hex");
    await this.sign(`${segment}.partial`, to, sha256);
    s.signed = to;
    s.signedSha = sha256;
  }

  /**
   * `segment` was finished (renamed from its `.partial`): once the receiver's position is past its
   * end, sign it whole, and expect the next one.
   */
  private async finish(segment: string) {
    const file = join(this.o.spool, segment);
    const s = await this.state(segment, file);
    if (!s || this.received(segment) < this.o.segmentBytes) return;
    const size = (await stat(file).catch(() => null))?.size ?? 0;
    if (size !== this.o.segmentBytes) return;
    const rest = await this.tail(segment, file, s, size);
    if (!rest || rest.length !== size - s.bytes) return;
    await this.sign(segment, size, s.hash.update(rest).digest("hex"));
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

  /** `segment` is not signed further (until a restart finds it matching its signature again). */
  private refuse(segment: string, msg: string) {
    this.tracked.set(segment, { bytes: 0, hash: new Bun.CryptoHasher("sha256"), signed: -1, refused: true });
    this.once(segment, msg);
  }

  private once(file: string, msg: string) {
    if (this.said.has(file)) return;
    this.said.add(file);
    this.o.log({ level: "error", msg, file });
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

type Tracked = { bytes: number; hash: Bun.CryptoHasher; signed: number; signedSha?: string; refused?: boolean };

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
