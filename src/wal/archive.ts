import { mkdir, readdir, rename, rm, stat } from "node:fs/promises";
import { createReadStream } from "node:fs";
import { Transform } from "node:stream";
import { basename, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { manyFilesEncryption, WRAPPED_KEY, type AgeConfig, type Encryption } from "../storage/crypt.ts";
import { fsyncDir, keptAlive, sha256File, takePartial, writeFileAtomic } from "../storage/files.ts";
import { sealTo } from "../storage/seal.ts";
import { signParts } from "../backup/manifest.ts";
import { parseHistory, parseSegment, timelineDir } from "./segments.ts";
import { trustProblem, type ArchiveTrust, type Untrusted } from "./trust.ts";

/**
 * The local WAL archive: `BACKUP_DIR/wal/<timeline>/<name>.gz[.age]`, each beside a record
 * `<name>.json` written last. A file without its record is unfinished and is written again; a
 * record says how to check what a later fetch reads back (SHA-256 of the stored bytes and of the
 * original WAL).
 */
export type WalRecord = {
  walRecordVersion: 1;
  name: string;
  /** A partial is the received start of a segment that will never be completed (see stream.ts). */
  kind: "segment" | "history" | "partial";
  timeline: number;
  file: string;
  sizeBytes: number;
  sha256: string;
  originalBytes: number;
  originalSha256: string;
  segmentBytes: number;
  encryption?: Encryption;
  /** When the receiver finished writing it (the newest commit it can hold is no later). */
  receivedAt: string;
  archivedAt: string;
  /** Verified off-site copies, by store kind. */
  offsite?: Record<string, { location: string; sizeBytes: number; copiedAt: string }>;
  /** HMAC of what identifies the file (walRecordParts), with BACKUP_MANIFEST_KEY when set. */
  signature?: string;
};

/**
 * What a WAL record's signature covers: everything a fetch checks and the window reads (not the
 * off-site copies, added later).
 */
const walRecordParts = (r: WalRecord): unknown[] => [
  "wal",
  r.name,
  r.kind,
  r.timeline,
  r.file,
  r.sizeBytes,
  r.sha256,
  r.originalBytes,
  r.originalSha256,
  r.segmentBytes,
  r.encryption ?? null,
  r.receivedAt,
];

/** `record` signed with `key` (unchanged without one). */
export const signWalRecord = (record: WalRecord, key: string | undefined): WalRecord =>
  key ? { ...record, signature: signParts(walRecordParts(record), key) } : record;

const kindName = (kind: string) =>
  kind === "history" ? "history file" : kind === "partial" ? "partial segment" : "segment";

/** Why this host may not use `record` (unsigned, mis-signed, plain where it encrypts), or null. */
export const walRecordProblem = (record: WalRecord, trust: ArchiveTrust): string | null =>
  trustProblem(
    `WAL ${kindName(record.kind)} ${record.name}`,
    { signature: record.signature, encrypted: Boolean(record.encryption) },
    walRecordParts(record),
    trust,
  );

export const walRoot = (backupDir: string) => join(backupDir, "wal");
export const spoolDir = (backupDir: string) => join(backupDir, "wal", "spool");
const RECORD = ".json";
/** WAL files up to this size are sealed from memory (see sealTo); PostgreSQL's own segments are 16 MiB. */
export const WAL_IN_MEMORY_MAX = 64 << 20;
/**
 * zstd's fastest level for WAL: a segment is sealed for every 16 MiB the primary writes, on its
 * host. On pgbench's WAL (full-page images) it is half the CPU of level 3 and no larger; on bulk
 * loads about 5% larger. Any level reads back the same.
 */
export const WAL_ZSTD_LEVEL = 1;
const TIMELINE_DIR = /^[0-9A-F]{8}$/;

function walKind(name: string, segmentBytes: number): { kind: WalRecord["kind"]; timeline: number } | null {
  const seg = parseSegment(name, segmentBytes);
  if (seg) return { kind: "segment", timeline: seg.timeline };
  const partial = name.endsWith(".partial") ? parseSegment(name.slice(0, -".partial".length), segmentBytes) : null;
  if (partial) return { kind: "partial", timeline: partial.timeline };
  const tl = parseHistory(name);
  return tl ? { kind: "history", timeline: tl } : null;
}

/** A record's `encryption`, when it has one, in a shape decrypt reads (it may come from a bucket): nothing more. */
const encryptionOk = (e: unknown): boolean => {
  if (e === undefined) return true;
  const m = e as Record<string, unknown>;
  if (typeof m !== "object" || m === null || Array.isArray(m)) return false;
  const keys = Object.keys(m);
  if (m.method === "recipients")
    return (
      keys.length === 2 &&
      Array.isArray(m.recipients) &&
      m.recipients.length > 0 &&
      m.recipients.every((r) => typeof r === "string")
    );
  if (m.method !== "passphrase") return false;
  if (m.wrappedKey === undefined) return keys.length === 1;
  return keys.length === 2 && typeof m.wrappedKey === "string" && WRAPPED_KEY.test(m.wrappedKey);
};

export const recordPath = (root: string, timeline: number, name: string) =>
  join(root, timelineDir(timeline), name + RECORD);

/** A record, checked before anything in it is trusted (it may come from a bucket); null when unusable. */
export async function readRecord(
  path: string,
  name = basename(path).slice(0, -RECORD.length),
): Promise<WalRecord | null> {
  try {
    const r = (await Bun.file(path).json()) as WalRecord;
    const ok =
      r &&
      r.walRecordVersion === 1 &&
      r.name === name &&
      /^[0-9a-f]{64}$/.test(r.sha256) &&
      /^[0-9a-f]{64}$/.test(r.originalSha256) &&
      Number.isSafeInteger(r.sizeBytes) &&
      (r.file === `${name}.zst` ||
        r.file === `${name}.zst.age` ||
        r.file === `${name}.gz` ||
        r.file === `${name}.gz.age`) &&
      r.file.endsWith(".age") === Boolean(r.encryption) &&
      encryptionOk(r.encryption) &&
      Number.isInteger(r.segmentBytes) &&
      r.segmentBytes >= 1 << 20 &&
      r.segmentBytes <= 1 << 30 &&
      // What a fetch lets the file decompress to, at most: a segment, never more.
      Number.isSafeInteger(r.originalBytes) &&
      r.originalBytes >= 0 &&
      r.originalBytes <= r.segmentBytes &&
      !Number.isNaN(Date.parse(r.receivedAt));
    const what = ok ? walKind(name, r.segmentBytes) : null;
    return what && what.kind === r.kind && what.timeline === r.timeline ? r : null;
  } catch {
    return null;
  }
}

/**
 * Seal one finished WAL file from the spool into the archive. Idempotent: a file already archived
 * with the same content is not written again (a restarted receiver may fetch a segment twice);
 * different content under the same name is refused, keeping the first.
 */
export async function archiveWalFile(
  source: string,
  root: string,
  options: {
    age?: AgeConfig;
    segmentBytes: number;
    /** What the WAL service signed of it (trust.ts signedPart): the bytes sealed must be those. */
    signed?: { bytes: number; sha256: string; whole: boolean };
  },
): Promise<{ record: WalRecord; written: boolean }> {
  const name = basename(source);
  const what = walKind(name, options.segmentBytes);
  if (!what)
    throw new ShinkeiError(
      "WAL_ARCHIVE_FAILED",
      `${name} is not a WAL segment, partial segment or timeline history file name`,
    );
  const dir = join(root, timelineDir(what.timeline));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await stat(source);
  // Read once: hashed (and compared, or compressed) from memory; a segment larger than usual streams.
  const read = info.size <= WAL_IN_MEMORY_MAX ? await Bun.file(source).bytes() : undefined;
  // Of a partial, only the signed part is sealed, zeros after it (as recovery is served it): what
  // follows was not received, whoever wrote it there.
  const cut = options.signed && !options.signed.whole ? options.signed.bytes : Infinity;
  const bytes = read && read.length > cut ? zerosFrom(read, cut) : read;
  // One archiver of a name at a time: two services draining one spool (a redeploy that overlaps the
  // old container) each removed the other's `.partial` and renamed the survivor, so an encrypted
  // file could end up with the other's bytes under this one's record: the only copy, unreadable.
  // Whoever comes second waits, then finds the file archived. A crash's lock goes once it is stale.
  const lock = join(dir, `${name}.lock`);
  await (await takePartial(lock)).close();
  try {
    return await keptAlive(lock, () => sealOne({ source, root, dir, name, what, info, bytes, cut }, options));
  } finally {
    await rm(lock, { force: true });
  }
}

/** archiveWalFile's work, under its lock: `at` is what it read of the spool file. */
async function sealOne(
  at: {
    source: string;
    root: string;
    dir: string;
    name: string;
    what: NonNullable<ReturnType<typeof walKind>>;
    info: { mtime: Date };
    bytes: Uint8Array | undefined;
    cut: number;
  },
  options: { age?: AgeConfig; segmentBytes: number; signed?: { bytes: number; sha256: string; whole: boolean } },
): Promise<{ record: WalRecord; written: boolean }> {
  const { source, root, dir, name, what, info, bytes, cut } = at;
  const existing = await readRecord(join(dir, name + RECORD));
  if (existing) {
    const again = bytes ? new Bun.CryptoHasher("sha256").update(bytes).digest("hex") : await sha256File(source);
    if (again === existing.originalSha256) return { record: existing, written: false };
    throw new ShinkeiError(
      "WAL_ARCHIVE_FAILED",
      `${name} is already archived with different content; the archived copy is kept`,
      {
        hint: `Two servers may be streaming into one BACKUP_DIR. Compare ${source} with ${join(dir, existing.file)}.`,
      },
    );
  }
  const encryption = await manyFilesEncryption(options.age);
  const file = `${name}.zst${encryption ? ".age" : ""}`;
  const target = join(dir, file);
  const partial = `${target}.partial`;
  await rm(partial, { force: true });
  try {
    // The signed part is hashed from what is sealed: what is checked is what goes into the archive.
    const signed = options.signed;
    const prefix = new Bun.CryptoHasher("sha256");
    let seen = 0;
    let pos = 0;
    let input: Uint8Array | Transform;
    if (bytes) {
      seen = Math.min(bytes.length, signed?.bytes ?? 0);
      if (signed) prefix.update(bytes.subarray(0, seen));
      input = bytes;
    } else {
      const raw = createReadStream(source);
      input = raw.pipe(
        new Transform({
          transform(chunk: Buffer, _encoding, done) {
            const at = pos;
            pos += chunk.length;
            if (signed && seen < signed.bytes) {
              const take = chunk.subarray(0, signed.bytes - seen);
              prefix.update(take);
              seen += take.length;
            }
            done(null, at + chunk.length > cut ? zerosFrom(chunk, Math.max(0, cut - at)) : chunk);
          },
        }),
      );
      raw.on("error", (e) => (input as Transform).destroy(e)); // pipe() does not pass a read error on
    }
    const sealed = await sealTo(input, partial, {
      codec: "zstd",
      level: WAL_ZSTD_LEVEL,
      age: encryption ? options.age : undefined,
      encryption,
      plainHash: true,
    });
    if (
      signed &&
      (seen !== signed.bytes ||
        prefix.digest("hex") !== signed.sha256 ||
        (signed.whole && sealed.bytesIn !== signed.bytes))
    )
      throw new ShinkeiError(
        "ARCHIVE_UNTRUSTED",
        `${name} in the spool does not match what the WAL service signed of it: ` +
          "it was changed after it was received; it is not archived",
      );
    await rename(partial, target);
    await fsyncDir(dir);
    const record: WalRecord = signWalRecord(
      {
        walRecordVersion: 1,
        name,
        kind: what.kind,
        timeline: what.timeline,
        file,
        sizeBytes: sealed.sizeBytes,
        sha256: sealed.sha256,
        originalBytes: sealed.bytesIn,
        originalSha256: sealed.plainSha256!,
        segmentBytes: options.segmentBytes,
        encryption,
        receivedAt: info.mtime.toISOString(),
        archivedAt: new Date().toISOString(),
      },
      options.age?.manifestKey,
    );
    await writeRecord(root, record);
    return { record, written: true };
  } catch (e) {
    await rm(partial, { force: true });
    const err = e as NodeJS.ErrnoException;
    throw new ShinkeiError(
      "WAL_ARCHIVE_FAILED",
      `archiving ${name} failed: ${err.code === "ENOSPC" ? "the disk is full" : err.message}`,
      { cause: e },
    );
  }
}

export async function writeRecord(root: string, record: WalRecord): Promise<void> {
  await writeFileAtomic(recordPath(root, record.timeline, record.name), JSON.stringify(record, null, 2) + "\n");
}

/**
 * Rewrite the record `read` came from with `change` applied to what it holds now: a slow step (an
 * off-site copy) that read it earlier must not undo what was written meanwhile (`pitr sign`'s
 * signature). A record gone meanwhile (retention pruned it with its file) stays gone: written
 * back, it would name a file that is not there.
 */
export async function updateRecord(
  root: string,
  read: WalRecord,
  change: (now: WalRecord) => WalRecord,
): Promise<void> {
  const now = await readRecord(recordPath(root, read.timeline, read.name), read.name);
  if (now?.file === read.file) await writeRecord(root, change(now));
}

/**
 * Every complete archived WAL file (record and file present), by timeline then name. `skip`
 * leaves out names the caller already knows, without reading their records. With `trust`, a
 * record this host may not use is left out and named in `untrusted`.
 */
export async function listArchive(
  root: string,
  skip?: Set<string>,
  trust?: ArchiveTrust,
  untrusted?: Untrusted[],
): Promise<WalRecord[]> {
  const out: WalRecord[] = [];
  for (const tl of (await readdir(root).catch(() => [] as string[])).filter((d) => TIMELINE_DIR.test(d)).sort()) {
    const dir = join(root, tl);
    const names = new Set(await readdir(dir).catch(() => [] as string[]));
    for (const n of [...names].filter((n) => n.endsWith(RECORD)).sort()) {
      if (skip?.has(n.slice(0, -RECORD.length))) continue;
      const r = await readRecord(join(dir, n));
      if (!r || !names.has(r.file) || timelineDir(r.timeline) !== tl) continue;
      const problem = trust ? walRecordProblem(r, trust) : null;
      if (problem) untrusted?.push({ file: r.name, problem });
      else out.push(r);
    }
  }
  return out;
}

/** A copy of `bytes` with every byte from `from` on zero. */
function zerosFrom(bytes: Uint8Array, from: number): Buffer {
  const out = Buffer.from(bytes);
  out.fill(0, from);
  return out;
}
