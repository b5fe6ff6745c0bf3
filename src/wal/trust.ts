import { open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import type { AgeConfig } from "../storage/crypt.ts";
import { signatureMatches } from "../backup/manifest.ts";

/**
 * What this host accepts from its archive (base backups, WAL segments, history files, locally or
 * off-site): with BACKUP_MANIFEST_KEY, only records it signed; on a host that encrypts (or holds a
 * key to open backups), only encrypted files unless the operator allows plain ones for this run.
 * Anyone who can write to BACKUP_DIR or the bucket could otherwise plant a base backup whose
 * settings run a program, or WAL that rewrites the recovered database.
 */
export type ArchiveTrust = { key?: string; encrypts: boolean; allowUnencrypted?: boolean };

/** A file of the archive left out, and why: shown by pitr status, backup check and the status page. */
export type Untrusted = { file: string; problem: string };

export function archiveTrust(age: AgeConfig | undefined, allow: { unencrypted?: boolean } = {}): ArchiveTrust {
  return {
    key: age?.manifestKey || undefined,
    encrypts: Boolean(age && (age.recipients.length || age.passphrase || age.identityFile)),
    allowUnencrypted: allow.unencrypted,
  };
}

/** At most `shown` of them, one line each, then how many more: an archive signed too late may leave out thousands. */
export function describeUntrusted(untrusted: Untrusted[], shown = 5): string[] {
  const lines = untrusted.slice(0, shown).map((u) => u.problem);
  if (untrusted.length > shown)
    lines.push(`and ${untrusted.length - shown} more file(s) left out (shinkei pitr status --json lists them)`);
  return lines;
}

/** Why `what` (signed over `parts`) cannot be used on this host, or null when it can. */
export function trustProblem(
  what: string,
  record: { signature?: unknown; encrypted: boolean },
  parts: unknown[],
  trust: ArchiveTrust,
): string | null {
  if (trust.key) {
    if (record.signature === undefined)
      return (
        `${what} is not signed, and BACKUP_MANIFEST_KEY is set: nothing shows that shinkei wrote it ` +
        `(shinkei pitr sign signs an archive written before signing)`
      );
    if (!signatureMatches(record.signature, parts, trust.key))
      return `${what} does not match its signature: it was changed, or signed with another BACKUP_MANIFEST_KEY`;
  }
  if (trust.encrypts && !record.encrypted && !trust.allowUnencrypted)
    return (
      `${what} is not encrypted, and this host encrypts its backups (--allow-unencrypted lets it through ` +
      `for one run)`
    );
  return null;
}

/*
 * The spool (BACKUP_DIR/wal/spool) holds what pg_receivewal has received and the archiver has not
 * sealed yet: the segment being received (`.partial`) and, for a moment, the one it just finished.
 * Recovery to the latest moment reads them, and the archiver seals them into signed records. So
 * with BACKUP_MANIFEST_KEY, a spool file is used only as far as the WAL service signed it while it
 * watched the receiver write it (spoolsign.ts): a signature beside it, in `wal/spool-signed/`, over
 * its first `bytes` bytes. A file planted in the spool has none, or one its bytes do not match.
 */

/** What the WAL service recorded of a spool file: its first `bytes` bytes hash to `sha256`. */
export type SpoolSignature = {
  spoolSignatureVersion: 1;
  /** The spool file's name (a segment, or a segment's `.partial`). */
  name: string;
  bytes: number;
  sha256: string;
  signature: string;
};

export const spoolSignatureDir = (backupDir: string) => join(backupDir, "wal", "spool-signed");
export const spoolSignaturePath = (backupDir: string, name: string) =>
  join(spoolSignatureDir(backupDir), `${name}.json`);
export const spoolSignatureParts = (s: Pick<SpoolSignature, "name" | "bytes" | "sha256">) => [
  "spool",
  s.name,
  s.bytes,
  s.sha256,
];

/** The signature of spool file `name`, when it is one and `key` made it; null otherwise. */
export async function readSpoolSignature(backupDir: string, name: string, key: string): Promise<SpoolSignature | null> {
  const s = (await Bun.file(spoolSignaturePath(backupDir, name))
    .json()
    .catch(() => null)) as SpoolSignature | null;
  const ok =
    s?.spoolSignatureVersion === 1 &&
    s.name === name &&
    Number.isSafeInteger(s.bytes) &&
    s.bytes >= 0 &&
    /^[0-9a-f]{64}$/.test(s.sha256) &&
    signatureMatches(s.signature, spoolSignatureParts(s), key);
  return ok ? s : null;
}

/** `unsigned`: no signature at all (not a mismatch); for a partial that is where the archive ends. */
function spoolRefusal(what: string, unsigned = false): ShinkeiError {
  return new ShinkeiError("ARCHIVE_UNTRUSTED", what, {
    details: { unsigned },
    hint:
      "Nothing was restored from it. Whoever can write to BACKUP_DIR may have planted it in the spool; " +
      "the WAL service signs only what its receiver wrote.",
  });
}

/**
 * Copy the spool file `name` (at `from`) to `target` as far as the WAL service signed it, zeros
 * after (recovery reads zeros as the end of WAL), or throw ARCHIVE_UNTRUSTED and write nothing.
 * The bytes are hashed as they are copied, so what is checked is what is served. A whole segment
 * must be signed whole. Without a key nothing in the archive is signed, and the file is copied as is.
 */
export async function copySpoolFile(
  backupDir: string,
  name: string,
  from: string,
  target: string,
  key: string | undefined,
): Promise<void> {
  const partial = `${target}.partial`;
  try {
    const source = await open(from, "r");
    try {
      const size = (await source.stat()).size;
      const what = `WAL ${name.endsWith(".partial") ? "partial segment" : "segment"} ${name} in the spool`;
      let bytes = size;
      let sig: SpoolSignature | null = null;
      // A segment just finished, before the receiver's position on the server has passed its end:
      // served as far as it was signed while it was the partial (recovery asks again for the rest).
      let asPartial = false;
      if (key) {
        sig = await readSpoolSignature(backupDir, name, key);
        if (!sig && !name.endsWith(".partial")) {
          sig = await readSpoolSignature(backupDir, `${name}.partial`, key);
          asPartial = sig !== null;
        }
        if (!sig) {
          const there = await Bun.file(spoolSignaturePath(backupDir, name)).exists();
          throw spoolRefusal(
            there
              ? `${what} does not match its signature: it was changed, or signed with another BACKUP_MANIFEST_KEY`
              : `${what} is not signed, and BACKUP_MANIFEST_KEY is set: the WAL receiver did not write it`,
            !there,
          );
        }
        if (sig.bytes > size || (!name.endsWith(".partial") && !asPartial && sig.bytes !== size))
          throw spoolRefusal(`${what} is not the size its signature gives: it was changed after it was received`);
        bytes = sig.bytes;
      }
      const out = await open(partial, "w", 0o600);
      try {
        // Only a signature has a hash to compare with: without a key, hashing 16 MiB would check nothing.
        const hash = sig ? new Bun.CryptoHasher("sha256") : null;
        const buf = Buffer.alloc(1 << 20);
        for (let at = 0; at < bytes; ) {
          const { bytesRead } = await source.read(buf, 0, Math.min(buf.length, bytes - at), at);
          if (bytesRead === 0) throw spoolRefusal(`${what} became shorter while it was read`);
          hash?.update(buf.subarray(0, bytesRead));
          await out.write(buf, 0, bytesRead);
          at += bytesRead;
        }
        if (sig && hash!.digest("hex") !== sig.sha256)
          throw spoolRefusal(`${what} was changed after the WAL receiver signed it`);
        // Zeros to the file's size: what came after the signed part is not served.
        if (bytes < size) await out.truncate(size);
      } finally {
        await out.close();
      }
    } finally {
      await source.close();
    }
    await rename(partial, target);
  } finally {
    await rm(partial, { force: true });
  }
}

/**
 * What the archiver may seal of spool file `name` with a key set: the part the WAL service signed
 * (a whole segment or history file must be signed whole; a partial's bytes after it are sealed as
 * zeros); ARCHIVE_UNTRUSTED when it is not signed. A history file is signed only for a timeline the
 * receiver announced: one planted in the spool would otherwise be sealed, and served to recovery.
 */
export async function signedPart(
  backupDir: string,
  name: string,
  key: string,
): Promise<{ bytes: number; sha256: string; whole: boolean }> {
  const partial = name.endsWith(".partial");
  const what = partial ? "partial segment" : /^[0-9A-F]{24}$/.test(name) ? "segment" : "timeline history file";
  const sig = await readSpoolSignature(backupDir, name, key);
  if (!sig)
    throw spoolRefusal(
      `WAL ${what} ${name} in the spool is not signed, ` +
        "and BACKUP_MANIFEST_KEY is set: the WAL receiver did not write it; it is not archived",
    );
  return { bytes: sig.bytes, sha256: sig.sha256, whole: !partial };
}
