import { readFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { Decrypter, Encrypter, generateIdentity, identityToRecipient } from "age-encryption";
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
export type Encryption = { method: "recipients"; recipients: string[] } | { method: "passphrase" };

export const AGE_MAGIC = "age-encryption.org/v1";
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
  const lines = readFile(value).split("\n").map((l, i) => ({ key: l.trim(), n: i + 1 })).filter(({ key }) => key && !key.startsWith("#"));
  const bad = lines.find(({ key }) => !RECIPIENT.test(key));
  if (bad !== undefined) {
    const what = /^AGE-SECRET-KEY-/i.test(bad.key) ? "is a private key: it belongs in BACKUP_AGE_IDENTITY, never here" : "is not an age public key (age1...)";
    throw new Error(`file ${value}: line ${bad.n} ${what}`);
  }
  if (lines.length === 0) throw new Error(`file ${value} holds no age public keys`);
  return lines.map(({ key }) => key);
}

/**
 * The backup keys from their variables (config reads them here, where encryption lives): the
 * recipients file is read once, at start; undefined when none is set.
 */
export function ageConfig(vars: { recipients?: string; identityFile?: string; passphrase?: string; manifestKey?: string }): AgeConfig | undefined {
  let recipients: string[] = [];
  if (vars.recipients) {
    try {
      recipients = parseRecipients(vars.recipients, (path) => readFileSync(path, "utf8"));
    } catch (e) {
      throw new ShinkeiError("CONFIG_INVALID", `BACKUP_AGE_RECIPIENTS ${(e as Error).message.replace(/^ENOENT.*/, "is neither age public keys nor a readable file of them")}`, {
        hint: "Give age1... public keys (space or comma separated), or the path of a file with one per line.",
      });
    }
    if (vars.passphrase) {
      throw new ShinkeiError("CONFIG_INVALID", "BACKUP_AGE_RECIPIENTS and BACKUP_AGE_PASSPHRASE are both set; choose one way to encrypt");
    }
  }
  if (!recipients.length && !vars.identityFile && !vars.passphrase && !vars.manifestKey) return undefined;
  return { recipients, identityFile: vars.identityFile, passphrase: vars.passphrase, manifestKey: vars.manifestKey };
}

/** How new backups are encrypted under this configuration, or undefined for none. */
export function encryptionFor(age: AgeConfig | undefined): Encryption | undefined {
  if (!age) return undefined;
  if (age.recipients.length) return { method: "recipients", recipients: age.recipients };
  if (age.passphrase) return { method: "passphrase" };
  return undefined;
}

/** Whether this host holds a key that opens backups made with `made` (always, for plain ones). */
export function canOpen(made: Encryption | undefined, age: AgeConfig | undefined): boolean {
  if (!made) return true;
  return made.method === "recipients" ? Boolean(age?.identityFile) : Boolean(age?.passphrase);
}

export async function encrypt(stream: ReadableStream<Uint8Array>, age: AgeConfig): Promise<ReadableStream<Uint8Array>> {
  const e = new Encrypter();
  if (age.recipients.length) for (const r of age.recipients) e.addRecipient(r);
  else e.setPassphrase(age.passphrase!);
  return e.encrypt(stream);
}

async function identities(path: string): Promise<string[]> {
  const file = Bun.file(path);
  if (!(await file.exists())) throw new ShinkeiError("KEY_MISSING", `BACKUP_AGE_IDENTITY names ${path}, which does not exist`);
  return (await file.text()).split("\n").map((l) => l.trim()).filter((l) => l.startsWith("AGE-SECRET-KEY-"));
}

/** Add each private key, naming a bad one by its line only: age's own message quotes the key. */
function addIdentities(d: Decrypter, keys: string[], path: string) {
  keys.forEach((k, i) => {
    try {
      d.addIdentity(k);
    } catch {
      throw new ShinkeiError("KEY_INVALID", `BACKUP_AGE_IDENTITY: private key ${i + 1} in ${path} is not a valid age key`, {
        hint: "Replace it with the key file `shinkei backup keygen` (or age-keygen) wrote. Nothing was changed.",
      });
    }
  });
}

/** Whatever a library says about keys, no key text leaves this module. */
const withoutKeys = (message: string) => message.replace(/AGE-SECRET-KEY-\S*/gi, "AGE-SECRET-KEY-(hidden)");

/**
 * Decrypt a backup's bytes. Without a key, or with keys that do not open it, one error says which
 * recipients the backup was made for, so the right private key can be found.
 */
export async function decrypt(stream: ReadableStream<Uint8Array>, age: AgeConfig | undefined, file: string, made?: Encryption): Promise<ReadableStream<Uint8Array>> {
  const forWhom = made?.method === "recipients" ? `encrypted to ${made.recipients.join(", ")}` : made?.method === "passphrase" ? "encrypted with a passphrase" : "encrypted with age";
  const keys = age?.identityFile ? await identities(age.identityFile) : [];
  if (keys.length === 0 && !age?.passphrase) {
    throw new ShinkeiError("KEY_MISSING", `${file} is ${forWhom}, and no key to open it is configured`, {
      hint: "Set BACKUP_AGE_IDENTITY to a file holding the matching private key (or BACKUP_AGE_PASSPHRASE). Nothing was changed.",
    });
  }
  const d = new Decrypter();
  if (keys.length) addIdentities(d, keys, age!.identityFile!);
  if (age?.passphrase) d.addPassphrase(age.passphrase);
  try {
    return await d.decrypt(stream);
  } catch (e) {
    throw new ShinkeiError("DECRYPT_FAILED", `cannot decrypt ${file} (${forWhom}): ${withoutKeys((e as Error).message)}`, {
      hint: "Check BACKUP_AGE_IDENTITY or BACKUP_AGE_PASSPHRASE. Nothing was changed.",
    });
  }
}

/**
 * Write a new identity (private key) to `path` with mode 0600, never over an existing file, in
 * age-keygen's layout; return its public key for BACKUP_AGE_RECIPIENTS.
 */
export async function writeIdentity(path: string): Promise<string> {
  const identity = await generateIdentity();
  const recipient = await identityToRecipient(identity);
  const file = await open(path, "wx", 0o600).catch((e: NodeJS.ErrnoException) => {
    throw new ShinkeiError("KEY_FILE_UNWRITABLE", e.code === "EEXIST" ? `${path} already exists; refusing to overwrite a key` : `cannot create ${path}: ${e.code ?? e.message}`);
  });
  try {
    await file.writeFile(`# created: ${new Date().toISOString()}\n# public key: ${recipient}\n${identity}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  return recipient;
}
