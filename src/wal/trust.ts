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
