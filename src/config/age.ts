import { readFileSync } from "node:fs";
import { ShinkeiError } from "../errors.ts";

/**
 * age encryption of backups. With recipients (public keys) the backup host can write backups but
 * never read them: the private keys live elsewhere and are only needed to restore. A passphrase is
 * simpler, and then sits wherever the backup service's environment does.
 */
export type AgeConfig = {
  recipients: string[];
  passphrase?: string;
  identityFile?: string;
  /** Not age's: the secret that signs manifests (BACKUP_MANIFEST_KEY) travels with the backup keys. */
  manifestKey?: string;
};

const RECIPIENT = /^age1[0-9a-z]{20,}$/;

/**
 * Keys from BACKUP_AGE_RECIPIENTS: given inline (space or comma separated) or as a file of them.
 * A bad line of a file is named by its number only: the file may be a private key put here by
 * mistake, and no part of it may reach a terminal or a log.
 */
export function parseRecipients(value: string, readFile: (path: string) => string): string[] {
  const inline = value.split(/[\s,]+/).filter(Boolean);
  if (inline.every((k) => k.startsWith("age1"))) {
    const bad = inline.find((k) => !RECIPIENT.test(k));
    if (bad !== undefined) throw new Error(`"${bad.slice(0, 24)}" is not an age public key (age1...)`);
    return inline;
  }
  const lines = readFile(value)
    .split("\n")
    .map((l, i) => ({ key: l.trim(), n: i + 1 }))
    .filter(({ key }) => key && !key.startsWith("#"));
  const bad = lines.find(({ key }) => !RECIPIENT.test(key));
  if (bad !== undefined) {
    const what = /^AGE-SECRET-KEY-/i.test(bad.key)
      ? "is a private key: it belongs in BACKUP_AGE_IDENTITY, never here"
      : "is not an age public key (age1...)";
    throw new Error(`file ${value}: line ${bad.n} ${what}`);
  }
  if (lines.length === 0) throw new Error(`file ${value} holds no age public keys`);
  return lines.map(({ key }) => key);
}

/**
 * The backup keys from their variables: the recipients file is read once, at start; undefined
 * when none is set.
 */
export function ageConfig(vars: {
  recipients?: string;
  identityFile?: string;
  passphrase?: string;
  manifestKey?: string;
}): AgeConfig | undefined {
  let recipients: string[] = [];
  if (vars.recipients) {
    try {
      recipients = parseRecipients(vars.recipients, (path) => readFileSync(path, "utf8"));
    } catch (e) {
      const why = (e as Error).message.replace(/^ENOENT.*/, "is neither age public keys nor a readable file of them");
      throw new ShinkeiError("CONFIG_INVALID", `BACKUP_AGE_RECIPIENTS ${why}`, {
        hint: "Give age1... public keys (space or comma separated), or the path of a file with one per line.",
      });
    }
    if (vars.passphrase) {
      throw new ShinkeiError(
        "CONFIG_INVALID",
        "BACKUP_AGE_RECIPIENTS and BACKUP_AGE_PASSPHRASE are both set; choose one way to encrypt",
      );
    }
  }
  if (!recipients.length && !vars.identityFile && !vars.passphrase && !vars.manifestKey) return undefined;
  return { recipients, identityFile: vars.identityFile, passphrase: vars.passphrase, manifestKey: vars.manifestKey };
}
