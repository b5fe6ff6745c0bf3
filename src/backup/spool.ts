import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

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
}

const FLUSH = 1 << 20;

export class Spool {
  readonly path: string;
  private readonly dir: string;
  private fd: number;
  private buf = new Uint8Array(FLUSH * 2);
  private used = 0;
  private encoder = new TextEncoder();

  constructor(parent = tmpdir()) {
    // A folder only this user can enter (mkdtemp makes it 0700): the judged file waits here.
    this.dir = mkdtempSync(join(parent, ".shinkei-restore-"));
    this.path = join(this.dir, "judged");
    this.fd = openSync(this.path, "w+", 0o600);
  }

  text(type: Rec.Statement | Rec.Copy, text: string) {
    this.add(type, this.encoder.encode(text));
  }

  data(bytes: Uint8Array) {
    this.add(Rec.Data, bytes);
  }

  endCopy() {
    this.add(Rec.EndCopy, new Uint8Array(0));
  }

  private add(type: Rec, bytes: Uint8Array) {
    if (this.used + 5 > this.buf.length) this.flush();
    this.buf[this.used] = type;
    new DataView(this.buf.buffer).setUint32(this.used + 1, bytes.length, true);
    this.used += 5;
    if (bytes.length > this.buf.length - this.used) {
      this.flush();
      writeAll(this.fd, bytes);
      return;
    }
    this.buf.set(bytes, this.used);
    this.used += bytes.length;
    if (this.used >= FLUSH) this.flush();
  }

  private flush() {
    if (this.used) writeAll(this.fd, this.buf.subarray(0, this.used));
    this.used = 0;
  }

  /** The records in the order they were written; Data records may arrive split in pieces. */
  *records(): Generator<{ type: Rec; bytes: Uint8Array; more: boolean }> {
    this.flush();
    const chunk = new Uint8Array(FLUSH);
    let pos = 0; // file position of chunk[0]
    let have = 0;
    let at = 0;
    const fill = () => {
      if (at > 0) {
        chunk.copyWithin(0, at, have);
        pos += at;
        have -= at;
        at = 0;
      }
      const n = readSync(this.fd, chunk, have, chunk.length - have, pos + have);
      have += n;
      return n;
    };
    for (;;) {
      if (have - at < 5 && fill() === 0 && have - at === 0) return;
      if (have - at < 5) throw new Error("the restore's spool file is damaged");
      const type = chunk[at] as Rec;
      let left = new DataView(chunk.buffer).getUint32(at + 1, true);
      at += 5;
      if (left === 0) yield { type, bytes: chunk.subarray(0, 0), more: false };
      while (left > 0) {
        if (have - at === 0 && fill() === 0) throw new Error("the restore's spool file is damaged");
        const n = Math.min(left, have - at);
        left -= n;
        // A copy: the consumer may hold on to it (COPY data is written to a socket asynchronously).
        yield { type, bytes: chunk.slice(at, at + n), more: left > 0 };
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

function writeAll(fd: number, bytes: Uint8Array) {
  let off = 0;
  while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
}
