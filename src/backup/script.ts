import { ShinkeiError } from "../errors.ts";

/**
 * A file to restore is untrusted input. This splitter finds its statements the way the server's
 * lexer does (quotes, dollar quotes, nested comments, `--` comments ending at LF or CR, `BEGIN
 * ATOMIC` bodies) and the data of each COPY FROM stdin, which it counts and hands on untouched.
 * It does not decide what runs: judge.ts parses every statement with PostgreSQL's own grammar and
 * refuses any disagreement about where a statement ends. Refused here already, with the line they
 * are on: top-level transaction control, DISCARD and DROP OWNED, any COPY but `COPY table FROM
 * stdin`, psql meta-commands, NUL bytes, and text that is not UTF-8. pg_dump's own large-object
 * blocks (`BEGIN;` lo_open / lowrite / lo_close `COMMIT;`) are the one exception: their BEGIN and
 * COMMIT are dropped, so the objects load inside the restore's transaction. It works on bytes:
 * every character that matters is ASCII, and no byte of a multibyte UTF-8 character is below 0x80.
 */

/** What the guard hands on: whole statements, and the data lines of a COPY FROM stdin. */
export type ScriptItem =
  | { kind: "statement"; text: string; bytes: Uint8Array; line: number; copy: boolean; empty: boolean }
  | { kind: "data"; bytes: Uint8Array }
  | { kind: "end-copy"; rows: number };

const enum S {
  Normal,
  Single, // '...'
  Escape, // E'...'
  Double, // "..."
  Dollar, // $tag$...$tag$
  LineComment,
  BlockComment,
  AfterCopy, // the rest of a COPY ... FROM STDIN line
  CopyData,
}

const Q = 0x27,
  DQ = 0x22,
  DOLLAR = 0x24,
  DASH = 0x2d,
  SLASH = 0x2f,
  STAR = 0x2a,
  SEMI = 0x3b;
const BACKSLASH = 0x5c,
  NL = 0x0a,
  CR = 0x0d,
  LPAREN = 0x28,
  RPAREN = 0x29,
  DOT = 0x2e;

const isIdentStart = (b: number) => (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x5f || b >= 0x80;
const isIdentPart = (b: number) => isIdentStart(b) || (b >= 0x30 && b <= 0x39) || b === DOLLAR;
// The server's lexer: space is [ \t\n\r\f\v], and a `--` comment ends at the first \n or \r.
const isSpace = (b: number) => b === 0x20 || b === 0x09 || b === NL || b === CR || b === 0x0c || b === 0x0b;

const TRANSACTION_CONTROL = new Set(["BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"]);
const ROUTINE = new Set(["FUNCTION", "PROCEDURE"]);
const LARGE_OBJECT_WRITE = /^SELECT pg_catalog\.(lo_open|lowrite|lo_close) ?\(/;
/** A dump's own `\restrict KEY` / `\unrestrict KEY` lines: the only meta-commands accepted (and left out). */
const RESTRICT_LINE = /^\\(un)?restrict [A-Za-z0-9]+\r?$/;
const HEAD_LIMIT = 512;
/*
 * The most one statement (with the comments before it) and one line may hold here. PostgreSQL takes
 * no query string and no COPY line above 1 GB (MaxAllocSize), so no line a server can load is
 * refused; a statement pg_dump writes is far smaller (data goes in COPY lines, large objects in
 * pieces). Without a bound, a few hundred KB of zstd (gigabytes of comments, or a line that never
 * ends) took gigabytes of memory before anything was refused.
 */
const MAX_STATEMENT = 256 << 20;
const MAX_LINE = 1 << 30;

export class ScriptGuard {
  private state = S.Normal;
  /**
   * Bytes after the last newline seen, in the pieces they came in (joined once, when the line ends: a
   * long line is not copied again for every chunk): lexing works on whole lines, so lookahead never
   * crosses a chunk.
   */
  private partial: Uint8Array[] = [];
  private partialBytes = 0;
  /** Bytes of the statement in progress (and the comments before it), held until it has passed. */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** The statement's text with comments left out and spaces collapsed, up to HEAD_LIMIT bytes. */
  private head: number[] = [];
  /** The statement's first words (enough to classify it), and what a COPY's later words said. */
  private words: string[] = [];
  private previousWord = "";
  private fromStdin = false;
  /** A COPY that is not pg_dump's `COPY table [(columns)] FROM stdin`: `COPY (query)`, `TO`, `PROGRAM`. */
  private otherCopy = false;
  /** In CREATE FUNCTION/PROCEDURE, a BEGIN whose next word must be ATOMIC. */
  private expectAtomic = false;
  private word = "";
  private parenDepth = 0;
  /** `BEGIN ATOMIC ... END` depth in CREATE FUNCTION/PROCEDURE, as psql counts it. */
  private blockDepth = 0;
  private commentDepth = 0;
  private dollarTag = "";
  private inLargeObjectBlock = false;
  private line = 0;
  private statementLine = 0;
  private copyRows = 0;

  private decoder = new TextDecoder("utf-8", { fatal: true });

  /** Feed bytes; returns what may be sent now. Throws RESTORE_UNSAFE on anything refused. */
  push(input: Uint8Array): ScriptItem[] {
    if (input.indexOf(0) !== -1) refuse("a NUL byte (psql would silently cut the line there)");
    const out: ScriptItem[] = [];
    const last = input.lastIndexOf(NL);
    if (last === -1) {
      this.holdPartial(input);
      return out;
    }
    let from = 0;
    if (this.partialBytes) {
      // Only the line the last chunk left unfinished is joined up, not the whole chunk: the bulk
      // of a dump is read in place (COPY data is handed on as pieces of the chunk itself).
      from = input.indexOf(NL) + 1;
      if (this.partialBytes + from > MAX_LINE) this.lineTooLong();
      const line = concatAll([...this.partial, input.subarray(0, from)]);
      this.partial = [];
      this.partialBytes = 0;
      this.lines(line, out);
    }
    this.holdPartial(input.subarray(last + 1));
    if (last + 1 > from) this.lines(input.subarray(from, last + 1), out);
    return out;
  }

  /** A copy: the caller may reuse or release the chunk it handed in. */
  private holdPartial(bytes: Uint8Array) {
    if (!bytes.length) return;
    if (this.partialBytes + bytes.length > MAX_LINE) this.lineTooLong();
    this.partial.push(bytes.slice());
    this.partialBytes += bytes.length;
  }

  private lineTooLong(): never {
    refuse(`a line of more than ${MAX_LINE >> 20} MiB (line ${this.line + 1}): PostgreSQL takes none`);
  }

  /** Whole lines (`buf` ends with a newline). */
  private lines(buf: Uint8Array, out: ScriptItem[]) {
    let start = 0;
    while (start < buf.length) {
      if (this.state === S.CopyData) {
        start = this.copyData(buf, start, out);
        continue;
      }
      const end = buf.indexOf(NL, start) + 1;
      this.line++;
      this.lexLine(buf, start, end, out);
      start = end;
    }
  }

  /** At the end of the file: anything unfinished is refused (a truncated file, an unclosed block). */
  end(): ScriptItem[] {
    const out = this.partialBytes ? this.push(new Uint8Array([NL])) : [];
    if (this.state === S.CopyData) refuse("COPY data that never ends with a \\. line");
    if (this.state !== S.Normal && this.state !== S.LineComment)
      refuse("an unterminated string, quoted name or comment at the end of the file");
    this.endWord();
    if (this.head.length)
      refuse(`a statement without its closing semicolon at the end of the file (line ${this.statementLine})`);
    if (this.inLargeObjectBlock) refuse("a large-object block without its COMMIT");
    this.pending = []; // comments after the last statement: nothing to run
    this.pendingBytes = 0;
    return out;
  }

  /**
   * COPY data lines, up to the `\.` line that ends them or the end of the chunk, handed on as one
   * piece (the COPY protocol takes any split): the bulk of a dump passes here, untouched.
   */
  private copyData(buf: Uint8Array, from: number, out: ScriptItem[]): number {
    let line = from;
    while (line < buf.length) {
      const end = buf.indexOf(NL, line) + 1;
      this.line++;
      const isEnd =
        buf[line] === BACKSLASH &&
        buf[line + 1] === DOT &&
        (end - line === 3 || (end - line === 4 && buf[line + 2] === CR));
      if (isEnd) {
        if (line > from) out.push({ kind: "data", bytes: buf.subarray(from, line) });
        out.push({ kind: "end-copy", rows: this.copyRows });
        this.copyRows = 0;
        this.state = S.Normal;
        return end;
      }
      // One line is one row: a newline inside a value is written as \n.
      this.copyRows++;
      line = end;
    }
    if (line > from) out.push({ kind: "data", bytes: buf.subarray(from, line) });
    return line;
  }

  private lexLine(buf: Uint8Array, from: number, to: number, out: ScriptItem[]) {
    let held = from; // bytes [held, i) of this line still to be added to pending
    for (let i = from; i < to; i++) {
      const b = buf[i]!;
      switch (this.state) {
        case S.LineComment:
          if (b === NL || b === CR) this.state = S.Normal;
          continue;
        case S.BlockComment:
          if (b === STAR && buf[i + 1] === SLASH) {
            i++;
            if (--this.commentDepth === 0) this.state = S.Normal;
          } else if (b === SLASH && buf[i + 1] === STAR) {
            i++;
            this.commentDepth++;
          }
          continue;
        case S.Single:
        case S.Escape:
          this.keep(b);
          // pg_dump writes standard_conforming_strings = on: a backslash escapes only in E'' strings.
          // (Were the file to turn it off, a split here could only be wrong, never hide a statement.)
          if (b === BACKSLASH && this.state === S.Escape) {
            this.keep(buf[i + 1]!);
            i++;
          } else if (b === Q) {
            if (buf[i + 1] === Q) {
              this.keep(Q);
              i++;
            } else {
              this.state = S.Normal;
            }
          }
          continue;
        case S.Double:
          this.keep(b);
          if (b === DQ) this.state = S.Normal;
          continue;
        case S.Dollar:
          if (b === DOLLAR && dollarTagAt(buf, i, to) === this.dollarTag) {
            for (let k = 0; k < this.dollarTag.length; k++) this.keep(buf[i + k]!);
            i += this.dollarTag.length - 1;
            this.state = S.Normal;
          }
          continue;
        case S.AfterCopy:
          if (b === NL) {
            // COPY data starts on the next line; psql would run anything after the `;` only after the data.
            held = to;
            this.state = S.CopyData;
          } else if (!isSpace(b)) {
            refuse(`text after COPY ... FROM STDIN on the same line (line ${this.line})`);
          }
          continue;
        case S.CopyData:
          continue; // unreachable: a COPY starts its data on a new line
        case S.Normal:
          break;
      }

      if (this.word !== "" && isIdentPart(b)) {
        this.word += String.fromCharCode(b);
        this.keep(b);
        continue;
      }
      if (b === Q) {
        const escapes = this.word === "E" || this.word === "e";
        this.endWord();
        this.begin();
        this.keep(b);
        this.state = escapes ? S.Escape : S.Single;
        continue;
      }
      this.endWord();
      if (isIdentStart(b)) {
        this.begin();
        this.word = String.fromCharCode(b);
        this.keep(b);
        continue;
      }
      if (isSpace(b)) {
        if (this.head.length && this.head[this.head.length - 1] !== 0x20) this.keep(0x20);
        continue;
      }
      if (b === DASH && buf[i + 1] === DASH) {
        this.state = S.LineComment;
        i++;
        continue;
      }
      if (b === SLASH && buf[i + 1] === STAR) {
        this.state = S.BlockComment;
        this.commentDepth = 1;
        i++;
        continue;
      }
      if (b === BACKSLASH) {
        const text = new TextDecoder().decode(buf.subarray(i, to)).replace(/\n$/, "");
        if (i === from && this.head.length === 0 && RESTRICT_LINE.test(text)) {
          // The dump's own \restrict line is left out: the restore sets its own, with its own key.
          this.hold(buf, held, i);
          held = to;
          break;
        }
        refuse(`the psql meta-command ${JSON.stringify(text.slice(0, 40))} (line ${this.line})`);
      }
      if (b === DOLLAR) {
        const tag = dollarTagAt(buf, i, to);
        if (tag !== "") {
          this.begin();
          for (let k = 0; k < tag.length; k++) this.keep(buf[i + k]!);
          this.dollarTag = tag;
          this.state = S.Dollar;
          i += tag.length - 1;
          continue;
        }
      }
      this.begin();
      this.keep(b);
      if (b === DQ) {
        this.state = S.Double;
      } else if (b === LPAREN) {
        // `COPY (query) ...` copies out; only pg_dump's `COPY table ... FROM stdin` loads.
        if (this.parenDepth === 0 && this.words.length === 1 && this.words[0] === "COPY") this.otherCopy = true;
        this.parenDepth++;
      } else if (b === RPAREN) {
        this.parenDepth--;
      } else if (b === SEMI && this.blockDepth === 0) {
        this.hold(buf, held, i + 1);
        held = i + 1;
        const line = this.statementLine;
        const empty = this.head.length === 1; // nothing but this `;` (and comments) since the last one
        const action = this.endStatement();
        if (action === "drop") {
          this.pending = [];
          this.pendingBytes = 0;
        } else this.flush(out, line, action === "copy", empty);
        if (action === "copy") this.state = S.AfterCopy;
      }
    }
    this.hold(buf, held, to);
  }

  private hold(buf: Uint8Array, from: number, to: number) {
    if (to <= from) return;
    this.pendingBytes += to - from;
    if (this.pendingBytes > MAX_STATEMENT)
      refuse(
        `a statement of more than ${MAX_STATEMENT >> 20} MiB, with the comments before it ` +
          `(line ${this.statementLine || this.line})`,
      );
    this.pending.push(buf.slice(from, to));
  }

  private flush(out: ScriptItem[], line: number, copy: boolean, empty: boolean) {
    const bytes = concatAll(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    let text: string;
    try {
      text = this.decoder.decode(bytes);
    } catch {
      refuse(`text that is not UTF-8 (line ${line}): dump the database with pg_dump --encoding=UTF8`);
    }
    out.push({ kind: "statement", text, bytes, line, copy, empty });
  }

  private begin() {
    if (this.head.length === 0) this.statementLine = this.line;
  }

  private keep(b: number) {
    if (this.head.length < HEAD_LIMIT) this.head.push(b);
  }

  private endWord() {
    if (this.word === "") return;
    const w = this.word.toUpperCase();
    this.word = "";
    if (this.words.length < 4) this.words.push(w);
    if (this.words[0] === "COPY" && this.parenDepth === 0) {
      if (w === "PROGRAM" || w === "TO") this.otherCopy = true;
      if (this.previousWord === "FROM" && w === "STDIN") this.fromStdin = true;
    }
    this.previousWord = w;
    if (this.expectAtomic) {
      this.expectAtomic = false;
      // Only BEGIN ATOMIC opens a block the server reads as one statement; any other BEGIN here
      // would glue the statements after it into this one (psql does the same), hiding them.
      if (w !== "ATOMIC") refuse(`BEGIN without ATOMIC inside CREATE FUNCTION/PROCEDURE (line ${this.line})`);
    }
    // psql's heuristic: in CREATE [OR REPLACE] FUNCTION/PROCEDURE, BEGIN (and CASE inside it) opens a block END closes.
    const [a, b, c, d] = this.words;
    const routine = a === "CREATE" && (ROUTINE.has(b ?? "") || (b === "OR" && c === "REPLACE" && ROUTINE.has(d ?? "")));
    if (routine && this.parenDepth === 0) {
      if (w === "BEGIN" && this.blockDepth === 0) this.expectAtomic = true;
      if (w === "BEGIN" || (w === "CASE" && this.blockDepth > 0)) this.blockDepth++;
      else if (w === "END" && this.blockDepth > 0) this.blockDepth--;
    }
  }

  private endStatement(): "pass" | "drop" | "copy" {
    const text = new TextDecoder().decode(new Uint8Array(this.head)).trim();
    const [first, second, third] = this.words;
    const { fromStdin, otherCopy } = this;
    const where = `line ${this.statementLine}`;
    this.head = [];
    this.words = [];
    this.previousWord = "";
    this.fromStdin = this.otherCopy = this.expectAtomic = false;
    this.parenDepth = 0;
    if (first === undefined) return "pass";

    if (this.inLargeObjectBlock) {
      if (text === "COMMIT;") {
        this.inLargeObjectBlock = false;
        return "drop";
      }
      if (!LARGE_OBJECT_WRITE.test(text))
        refuse(`${JSON.stringify(text.slice(0, 60))} inside a large-object block (${where})`);
      return "pass";
    }
    if (text === "BEGIN;") {
      this.inLargeObjectBlock = true;
      return "drop";
    }
    const toSavepoint =
      first === "ROLLBACK" && (second === "TO" || ((second === "WORK" || second === "TRANSACTION") && third === "TO"));
    if ((TRANSACTION_CONTROL.has(first) && !toSavepoint) || (first === "PREPARE" && second === "TRANSACTION")) {
      refuse(
        `transaction control, ${JSON.stringify(text.slice(0, 40))} (${where}): a restore runs in one ` +
          `transaction that only shinkei ends`,
      );
    }
    // Both would remove the temporary guard that lets only shinkei commit (see restore.ts).
    if (first === "DISCARD" || (first === "DROP" && second === "OWNED"))
      refuse(`${first} ${second ?? ""} (${where}): it would remove the restore's own guard`);
    if (first === "COPY") {
      // COPY TO a file or PROGRAM writes or runs things on the server that no rollback undoes.
      if (otherCopy || !fromStdin) refuse(`a COPY other than pg_dump's COPY table FROM stdin (${where})`);
      return "copy";
    }
    return "pass";
  }
}

/** The one error for a file a restore will not apply, from the splitter here and the grammar's judge alike. */
export function refuse(what: string): never {
  throw new ShinkeiError("RESTORE_UNSAFE", `the file contains ${what}`, {
    hint:
      "Nothing from it was applied. shinkei restores its own backups and pg_dump output " +
      "(plain or custom format, UTF-8, made without --create).",
  });
}

/** The parts as one buffer (the part itself when there is one). */
export function concatAll(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The `$tag$` delimiter starting at `i` (both dollars included), or "" when this `$` opens none (`$1`). */
function dollarTagAt(buf: Uint8Array, i: number, to: number): string {
  let j = i + 1;
  if (buf[j] === DOLLAR) return "$$";
  if (j >= to || !isIdentStart(buf[j]!)) return "";
  while (j < to && isIdentPart(buf[j]!) && buf[j] !== DOLLAR) j++;
  return buf[j] === DOLLAR ? new TextDecoder().decode(buf.subarray(i, j + 1)) : "";
}
