import { MANIFEST_SUFFIX } from "../storage/naming.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { RECORD_MAX_BYTES } from "../storage/store.ts";
import type { Encryption } from "../storage/crypt.ts";

export type Reason = "manual" | "scheduled" | "pre-restore" | "pre-reset" | "pre-migrate" | "pre-recover";

/** What we knew when the backup was taken, kept beside it as `<file>.manifest.json`. */
export type Manifest = {
  manifestVersion: 1;
  file: string;
  createdAt: string;
  reason: Reason;
  database: string;
  host: string;
  port: number;
  serverVersion: string;
  pgDumpVersion: string;
  schemaVersion: number;
  /** zstd since it replaced gzip for dumps; older manifests say gzip. */
  format: "plain+zstd" | "plain+zstd+age" | "plain+gzip" | "plain+gzip+age";
  /** How the file is encrypted (public keys only), when it is; the SHA-256 covers the encrypted bytes. */
  encryption?: Encryption;
  sizeBytes: number;
  sha256: string;
  durationMs: number;
  /** Row count of every table, read in the snapshot the dump was taken from. */
  counts: Record<string, number>;
  /** Order-independent content digest of every table, same snapshot (see digest.ts); drills compare it. */
  digests?: Record<string, string>;
  /** Verified off-site copies, by store kind. */
  offsite?: Record<string, OffsiteCopy>;
  /** HMAC-SHA256 of what identifies the backup, with BACKUP_MANIFEST_KEY (see signManifest). */
  signature?: string;
};

export type OffsiteCopy = {
  location: string;
  sizeBytes: number;
  etag?: string;
  verified: "etag" | "size";
  copiedAt: string;
};

/**
 * A bucket anyone can write to must not be able to swap in a backup that passes verification: with
 * BACKUP_MANIFEST_KEY set, the manifest carries an HMAC over the file's identity (name, checksum,
 * size, when, why, what it holds). Off-site records are left out: they are added later, and do not
 * change what is restored.
 */
function signedPart(m: Manifest): unknown[] {
  const { file, createdAt, reason, database, schemaVersion, format, encryption, sizeBytes, sha256, counts, digests } =
    m;
  return [
    file,
    createdAt,
    reason,
    database,
    schemaVersion,
    format,
    encryption ?? null,
    sizeBytes,
    sha256,
    counts,
    digests ?? null,
  ];
}

/**
 * The one signature every record shinkei writes carries (dump manifests, base backup manifests,
 * WAL records, recovery records): HMAC-SHA256 with BACKUP_MANIFEST_KEY over the JSON of what identifies the file.
 */
export function signParts(parts: unknown[], key: string): string {
  return new Bun.CryptoHasher("sha256", key).update(JSON.stringify(parts)).digest("hex");
}

export function signatureMatches(signature: unknown, parts: unknown[], key: string): boolean {
  if (typeof signature !== "string") return false;
  const expected = Buffer.from(signParts(parts, key));
  const given = Buffer.from(signature);
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

export function signManifest(m: Manifest, key: string): string {
  return signParts(signedPart(m), key);
}

export function hasValidSignature(m: Manifest, key: string): boolean {
  return signatureMatches(m.signature, signedPart(m), key);
}

export const manifestPath = (backupPath: string) => backupPath + MANIFEST_SUFFIX;

export async function readManifest(backupPath: string): Promise<Manifest | null> {
  const f = Bun.file(manifestPath(backupPath));
  if (!(await f.exists())) return null;
  // One larger than any manifest shinkei writes (planted) is not read whole: treated as unreadable.
  if (f.size > RECORD_MAX_BYTES) return null;
  try {
    return (await f.json()) as Manifest;
  } catch {
    return null; // an unreadable manifest is treated like a missing one: the file is checked on its own
  }
}

export async function writeManifest(backupPath: string, manifest: Manifest): Promise<void> {
  await writeFileAtomic(manifestPath(backupPath), JSON.stringify(manifest, null, 2) + "\n");
}
