import { open, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import { stderrLog } from "../log.ts";
import { codecOf, TooLarge, unsealBytes, unsealFrom } from "../storage/seal.ts";
import { RECORD_MAX_BYTES, type BackupStore } from "../storage/store.ts";
import { readRecord, recordPath, spoolDir, walRecordProblem, walRoot, type WalRecord } from "./archive.ts";
import { archiveTrust, copySpoolFile, readSpoolSignature } from "./trust.ts";
import { isSegmentName, parseHistory, parseSegment, timelineDir } from "./segments.ts";
import { fsyncDir, sha256File } from "../storage/files.ts";

/** The timeline a WAL file name belongs to, or null for anything that is not one (hostile names included). */
function timelineOf(name: string): number | null {
  // Only the shape and the timeline matter here (isSegmentName).
  const seg = parseSegment(name.replace(/\.partial$/, ""), 1024 * 1024);
  return seg ? seg.timeline : parseHistory(name);
}

/**
 * What PostgreSQL's restore_command asks for: the WAL file `name`, from the local archive (else
 * the off-site copy), checked against its record (SHA-256 of the stored bytes, then of the WAL
 * after decryption and gunzip), written to `target` whole or not at all. A segment just finished
 * and not yet sealed comes from the spool (with BACKUP_MANIFEST_KEY, only as far as it is signed).
 * A segment never archived whole is served from its partial (the one being received, else an
 * archived one): the end of what the archive holds. A file we do not have is NOT_FOUND (exit 1):
 * recovery asks for files that never existed, such as the next timeline's history.
 */
export async function fetchWal(
  config: Config,
  name: string,
  target: string,
  store?: BackupStore,
  options: FetchOptions = {},
): Promise<{ from: "local" | "offsite" | "receiving"; record: WalRecord | null }> {
  const timeline = timelineOf(name);
  if (timeline === null || name.endsWith(".partial"))
    throw new ShinkeiError("USAGE", `"${name.slice(0, 64)}" is not a WAL segment or timeline history file name`);
  // A segment the receiver has just finished waits in the spool until the archiver seals it: the
  // end of the archive as much as a partial is. (The archiver may take it meanwhile: then its record.)
  if (isSegmentName(name) && !(await readRecord(recordPath(walRoot(config.backupDir), timeline, name)))) {
    // Only "not there" falls through: a full disk or a read error must not read as the archive's end.
    const copied = await copySpooled(config, name, target, options).then(
      () => true,
      (e: NodeJS.ErrnoException) => {
        if (e.code === "ENOENT") return false;
        throw e;
      },
    );
    if (copied) return { from: "receiving", record: null };
  }
  try {
    return await fetchRecorded(config, name, timeline, target, store, options);
  } catch (e) {
    if (!(e instanceof ShinkeiError) || e.code !== "NOT_FOUND" || parseHistory(name) !== null) throw e;
    // Never finished as a whole segment: the part that was received is the end of the archive.
    // The one being received now is the freshest; recovery replays it up to its last whole record.
    if (await Bun.file(join(spoolDir(config.backupDir), `${name}.partial`)).exists()) {
      // A partial with no signature yet (the first moment of a segment, or one the service could not
      // sign before the primary went away) is not WAL we vouch for: the archive ends before it. A
      // signature that does not match is refused (exit 126), as is anything else planted.
      const copied = await copySpooled(config, `${name}.partial`, target, options).then(
        () => true,
        (err: unknown) => {
          if (err instanceof ShinkeiError && err.code === "ARCHIVE_UNTRUSTED" && err.details?.unsigned) {
            stderrLog({
              level: "warn",
              msg: "a partial segment in the spool is not signed (yet): the archive ends before it",
              file: `${name}.partial`,
            });
            return false;
          }
          throw err;
        },
      );
      if (copied) return { from: "receiving", record: null };
    }
    return await fetchRecorded(config, `${name}.partial`, timeline, target, store, options).catch(() => {
      throw e;
    });
  }
}

/**
 * Whether fetchWal serves WAL file `name` through byte `offset` of it (0: whole) now: sealed into
 * the archive, or in the spool; with BACKUP_MANIFEST_KEY only as far as the WAL service has signed
 * it, which it does on each of its passes, a moment after the receiver flushed. What a drill waits
 * for before it recovers to a point it has just made (without a key, the receiver's flush is enough).
 */
export async function servesThrough(config: Config, name: string, offset: number): Promise<boolean> {
  const timeline = timelineOf(name);
  if (timeline === null) return false;
  const key = config.backup.age?.manifestKey || undefined;
  if (!key || (await readRecord(recordPath(walRoot(config.backupDir), timeline, name)))) return true;
  if (await readSpoolSignature(config.backupDir, name, key)) return true;
  const partial = await readSpoolSignature(config.backupDir, `${name}.partial`, key);
  return offset > 0 && partial !== null && partial.bytes >= offset;
}

/**
 * Copy the spool's file `name` to `target` whole or not at all: with BACKUP_MANIFEST_KEY, only as
 * far as the WAL service signed it while its receiver wrote it (a planted one is ARCHIVE_UNTRUSTED).
 */
async function copySpooled(config: Config, name: string, target: string, options: FetchOptions): Promise<void> {
  const from = join(spoolDir(config.backupDir), name);
  await copySpoolFile(config.backupDir, name, from, target, config.backup.age?.manifestKey || undefined);
  if (options.durable !== false) await fsyncDir(dirname(target));
}

/**
 * Stored files up to this size are read into memory and unsealed there: a WAL segment, compressed
 * (PostgreSQL's default is 16 MiB before compression). Larger ones (segments of a server built with
 * a larger --wal-segsize) are streamed, so memory stays bounded.
 */
const IN_MEMORY_MAX = 32 * 1024 * 1024;

/** `durable: false` for a copy that is only passed on (a scratch recovery's): no fsync. */
export type FetchOptions = { durable?: boolean; allowUnencrypted?: boolean };

/** A record this host may not use is never read on (nor its file fetched): recovery aborts on it. */
function refuseUntrusted(config: Config, record: WalRecord, options: FetchOptions, where: string): void {
  const problem = walRecordProblem(record, archiveTrust(config.backup.age, { unencrypted: options.allowUnencrypted }));
  if (problem) {
    throw new ShinkeiError("ARCHIVE_UNTRUSTED", `${problem}${where}`, {
      hint:
        "Nothing was restored from it. Whoever can write to BACKUP_DIR or the bucket may have planted it; " +
        "see shinkei pitr status.",
    });
  }
}

async function fetchRecorded(
  config: Config,
  name: string,
  timeline: number,
  target: string,
  store: BackupStore | undefined,
  options: FetchOptions,
): Promise<{ from: "local" | "offsite"; record: WalRecord }> {
  const dir = join(walRoot(config.backupDir), timelineDir(timeline));
  let record = await readRecord(join(dir, `${name}.json`), name);
  let stored = record ? join(dir, record.file) : "";
  let from: "local" | "offsite" = "local";
  const temps: string[] = [];
  try {
    if (!record || !(await Bun.file(stored).exists())) {
      if (!store) throw new ShinkeiError("NOT_FOUND", `${name} is not in the WAL archive`);
      const tmp = `${target}.shinkei-fetch`;
      temps.push(`${tmp}.json`, tmp);
      try {
        await store.get(`${name}.json`, `${tmp}.json`, { maxBytes: RECORD_MAX_BYTES });
      } catch (e) {
        // Only a store that answers "no such key" means we do not have it; an unreachable one is not an answer.
        const cause = (e as { cause?: { name?: string; $metadata?: { httpStatusCode?: number } } }).cause;
        if (cause?.name === "NoSuchKey" || cause?.$metadata?.httpStatusCode === 404) {
          throw new ShinkeiError("NOT_FOUND", `${name} is in neither the local WAL archive nor ${store.location}`);
        }
        throw e;
      }
      record = await readRecord(`${tmp}.json`, name);
      if (!record) throw new ShinkeiError("BACKUP_CORRUPT", `the record of ${name} at ${store.location} is not usable`);
      refuseUntrusted(config, record, options, ` (${store.location})`);
      // Never more than its record says: a larger object swapped in is refused as it comes, not
      // after it filled the disk.
      await store.get(record.file, tmp, { maxBytes: record.sizeBytes });
      stored = tmp;
      from = "offsite";
    } else refuseUntrusted(config, record, options, "");
    // A zstd file small enough (a WAL segment) is read once, and unsealed in memory (unsealBytes).
    const inMemory = codecOf(record.file) === "zstd" && (await stat(stored)).size <= IN_MEMORY_MAX;
    const bytes = inMemory ? await Bun.file(stored).bytes() : null;
    const sha = bytes ? new Bun.CryptoHasher("sha256").update(bytes).digest("hex") : await sha256File(stored);
    if (sha !== record.sha256)
      throw new ShinkeiError(
        "BACKUP_CORRUPT",
        `${record.file} does not match its record (SHA-256 ${sha.slice(0, 12)}…, ` +
          `expected ${record.sha256.slice(0, 12)}…)`,
      );

    const partial = `${target}.partial`;
    temps.push(partial);
    const plain = new Bun.CryptoHasher("sha256");
    const how = {
      encryption: record.encryption,
      age: config.backup.age,
      name: record.file,
      maxBytes: record.originalBytes,
    };
    const file = await open(partial, "w", 0o600);
    try {
      if (bytes) {
        const out = await unsealBytes(bytes, how);
        plain.update(out);
        for (let at = 0; at < out.length; ) at += (await file.write(out, at)).bytesWritten;
      } else {
        let size = 0;
        await pipeline(await unsealFrom(stored, how), async (chunks: AsyncIterable<Buffer>) => {
          for await (const c of chunks) {
            // Not a disk filled by a planted file that decompresses without end.
            size += c.length;
            if (size > how.maxBytes) throw new TooLarge(how.name, how.maxBytes);
            plain.update(c);
            await file.write(c);
          }
        });
      }
      if (options.durable !== false) await file.sync();
    } catch (e) {
      if (e instanceof TooLarge) throw new ShinkeiError("BACKUP_CORRUPT", e.message);
      throw e;
    } finally {
      await file.close();
    }
    if (plain.digest("hex") !== record.originalSha256)
      throw new ShinkeiError("BACKUP_CORRUPT", `${name} decompressed to something other than what was archived`);
    await rename(partial, target);
    if (options.durable !== false) await fsyncDir(dirname(target));
    return { from, record };
  } finally {
    for (const t of temps) await rm(t, { force: true });
  }
}
