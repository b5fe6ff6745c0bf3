import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readSync,
  rmSync,
  statfsSync,
  statSync,
  writevSync,
} from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { formatBytes } from "../bytes.ts";
import { ShinkeiError } from "../errors.ts";

/**
 * What the judge passed, held on disk until the whole file has been judged: nothing runs before
 * its last line was read. The decoded stream is written once and read once (the page cache
 * usually serves the read), instead of reading, decrypting and decompressing the file again.
 * Records: a type byte, a 32-bit length, the bytes.
 */
export const enum Rec {
  Statement = 1,
  Copy = 2,
  Data = 3,
  EndCopy = 4,
  /** A CREATE EXTENSION: run alone, and what it makes is noted as the file's (restore.ts). */
  Extension = 5,
}

const PREFIX = ".shinkei-restore-";
/** Whose folder it is: host and pid, so a later restore knows one whose process is gone. */
const OWNER = `${hostname().replace(/[^A-Za-z0-9.]/g, "_")}-${process.pid}-`;
const OURS = /^\.shinkei-restore-(.+)-(\d+)-[A-Za-z0-9]{6}$/;
/** Folders an older shinkei made (no owner in the name): abandoned once this old. */
const UNNAMED_AGE_MS = 24 * 3600_000;

/**
 * A restore killed before it removed its spool (SIGKILL, a crash, the host going down) leaves the
 * whole decoded file behind, hidden in BACKUP_DIR: gigabytes no retention ever touches. Each new
 * spool removes the ones whose process is gone: made on this host (a BACKUP_DIR shared between
 * containers holds other hosts' folders, whose pids mean nothing here) by a pid no longer running.
 */
function removeAbandoned(parent: string) {
  let names: string[];
  try {
    names = readdirSync(parent).filter((n) => n.startsWith(PREFIX));
  } catch {
    return;
  }
  const host = OWNER.slice(0, OWNER.indexOf("-"));
  for (const name of names) {
    const owner = OURS.exec(name);
    let gone: boolean;
    if (owner) gone = owner[1] === host && !running(Number(owner[2]));
    else if (/^\.shinkei-restore-[A-Za-z0-9]{6}$/.test(name))
      gone =
        Date.now() - (statSync(join(parent, name), { throwIfNoEntry: false })?.mtimeMs ?? Date.now()) > UNNAMED_AGE_MS;
    else gone = false;
    if (gone) rmSync(join(parent, name), { recursive: true, force: true });
  }
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"; // alive, another user's
  }
}

/*
 * The spool holds the whole decoded file, beside the backups: a dump larger than the free space (or a
 * small file that decompresses far) would fill the disk, and with it the WAL archive's spool and the
 * next backup. The judge stops while this much is still free: a tenth of the file system, at most
 * 1 GiB; checked every few MiB written (a statfs call), so it stops within that of the line.
 */
const RESERVE_MAX = 1 << 30;
const RESERVE_SHARE = 0.1;
const CHECK_EVERY = 8 << 20;

const FLUSH = 1 << 20;
const READ = 1 << 20;
/** Read buffers used in turn (see records). */
export const RING = 4;
/** COPY data goes to the server in pieces of at most this: postgres.js copies each into a message. */
const PIECE = 256 << 10;

export class Spool {
  readonly path: string;
  private readonly dir: string;
  /** The folder the spool's own folder is made in (BACKUP_DIR, or the temp directory). */
  private readonly where: string;
  private fd: number;
  /** Pieces waiting to be written together (writev: COPY data is not copied on its way to disk). */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private encoder = new TextEncoder();
  /** Bytes that may still be written before free space is looked at again: none before the first. */
  private allowance = 0;
  private written = 0;

  constructor(parent = tmpdir()) {
    // A folder only this user can enter (mkdtemp makes it 0700): the judged file waits here.
    // Beside the backups when there is such a folder (a decoded dump can be larger than /tmp).
    const where = existsSync(parent) ? parent : tmpdir();
    this.where = where;
    removeAbandoned(where);
    this.dir = mkdtempSync(join(where, PREFIX + OWNER));
    this.path = join(this.dir, "judged");
    this.fd = openSync(this.path, "w+", 0o600);
  }

  /** A statement, after the line it starts on (4 bytes), for the load's errors. */
  text(type: Rec.Statement | Rec.Copy | Rec.Extension, text: string, line: number) {
    const bytes = this.encoder.encode(`\0\0\0\0${text}`);
    new DataView(bytes.buffer).setUint32(0, line, true);
    this.add(type, bytes);
  }

  /** COPY data: held by reference until written, so the caller must not reuse the bytes. */
  data(bytes: Uint8Array) {
    this.add(Rec.Data, bytes);
  }

  endCopy() {
    this.add(Rec.EndCopy, new Uint8Array(0));
  }

  private add(type: Rec, bytes: Uint8Array) {
    const head = new Uint8Array(5);
    head[0] = type;
    new DataView(head.buffer).setUint32(1, bytes.length, true);
    this.pending.push(head);
    if (bytes.length) this.pending.push(bytes);
    this.pendingBytes += 5 + bytes.length;
    if (this.pendingBytes >= FLUSH || this.pending.length >= 512) this.flush();
  }

  /** Write what waits now: the caller may then let go of (or release) the bytes it handed in. */
  flush() {
    let parts = this.pending;
    const n = this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    if (n > this.allowance) this.checkSpace(n);
    this.allowance -= n;
    this.written += n;
    while (parts.length) {
      let n = writevSync(this.fd, parts);
      // A short write: drop what went, and the written part of the piece it stopped in.
      let i = 0;
      while (i < parts.length && n >= parts[i]!.length) n -= parts[i++]!.length;
      parts = parts.slice(i);
      if (n > 0) parts[0] = parts[0]!.subarray(n);
    }
  }

  /** Free space before the first write; half of it is the most the reserve asks, on a disk already short. */
  private freeAtStart: number | undefined;

  /**
   * Before `n` more bytes are written: refused (nothing of them written) if they would eat into the
   * reserve; else what may be written before the next look, never more than what is left above it.
   */
  private checkSpace(n: number) {
    const fs = statfsSync(this.dir);
    const free = fs.bavail * fs.bsize;
    this.freeAtStart ??= free;
    const reserve = Math.min(RESERVE_MAX, RESERVE_SHARE * fs.blocks * fs.bsize, this.freeAtStart / 2);
    const margin = free - reserve - n;
    if (margin < 0)
      throw new ShinkeiError(
        "RESTORE_NO_SPACE",
        `the file decodes to more than the free space beside the backups allows: ` +
          `${formatBytes(this.written)} spooled (it is judged whole before anything runs), ` +
          `${formatBytes(free)} left in ${this.where}, and ${formatBytes(reserve)} stays free for the WAL archive ` +
          "and backups",
        { hint: "Free space there, or set BACKUP_DIR on a larger disk. Nothing was sent to the database." },
      );
    this.allowance = n + Math.min(CHECK_EVERY, margin);
  }

  /**
   * The records in the order they were written; a record may arrive split in pieces (`more`).
   * The pieces are views of RING read buffers of READ bytes used in turn (a fresh buffer per read
   * cost a 1 GB restore 49,000 of its 127,000 page faults): a piece is overwritten by the RING-th
   * read after its own, (RING - 1) MiB further on at least. A consumer copies what it keeps longer.
   */
  *records(): Generator<{ type: Rec; bytes: Uint8Array; more: boolean }> {
    this.flush();
    let pos = 0;
    let buf: Uint8Array = new Uint8Array(0);
    let at = 0;
    const ring: Uint8Array[] = [];
    let turn = 0;
    const fill = (): boolean => {
      // What is left of the last read is the start of a header (under 5 bytes) or nothing.
      const rest = buf.subarray(at);
      const next = (ring[turn % RING] ??= new Uint8Array(READ + 5));
      turn++;
      next.set(rest);
      // Whole reads (a file system may return less): the distance above counts in full buffers.
      let n = 0;
      while (n < READ) {
        const got = readSync(this.fd, next, rest.length + n, READ - n, pos + n);
        if (got === 0) break;
        n += got;
      }
      pos += n;
      buf = next.subarray(0, rest.length + n);
      at = 0;
      return n > 0;
    };
    for (;;) {
      if (buf.length - at < 5 && !fill()) {
        if (buf.length - at === 0) return;
        throw new Error("the restore's spool file is damaged");
      }
      if (buf.length - at < 5) continue;
      const type = buf[at] as Rec;
      let left = buf[at + 1]! | (buf[at + 2]! << 8) | (buf[at + 3]! << 16) | (buf[at + 4]! * 0x1000000);
      at += 5;
      if (left === 0) yield { type, bytes: buf.subarray(at, at), more: false };
      while (left > 0) {
        if (buf.length - at === 0 && !fill()) throw new Error("the restore's spool file is damaged");
        const n = Math.min(left, buf.length - at, PIECE);
        left -= n;
        yield { type, bytes: buf.subarray(at, at + n), more: left > 0 };
        at += n;
      }
    }
  }

  remove() {
    try {
      closeSync(this.fd);
    } catch {}
    rmSync(this.dir, { recursive: true, force: true });
  }
}
