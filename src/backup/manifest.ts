import { MANIFEST_SUFFIX } from "./naming.ts";
import { writeFileAtomic } from "./files.ts";
import type { Encryption } from "./crypt.ts";

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
  format: "plain+gzip" | "plain+gzip+age";
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
};

export type OffsiteCopy = { location: string; sizeBytes: number; etag?: string; verified: "etag" | "size"; copiedAt: string };

export const manifestPath = (backupPath: string) => backupPath + MANIFEST_SUFFIX;

export async function readManifest(backupPath: string): Promise<Manifest | null> {
  const f = Bun.file(manifestPath(backupPath));
  if (!(await f.exists())) return null;
  try {
    return (await f.json()) as Manifest;
  } catch {
    return null; // an unreadable manifest is treated like a missing one: the file is checked on its own
  }
}

export async function writeManifest(backupPath: string, manifest: Manifest): Promise<void> {
  await writeFileAtomic(manifestPath(backupPath), JSON.stringify(manifest, null, 2) + "\n");
}
