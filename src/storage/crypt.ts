import { open } from "node:fs/promises";
import type { AgeConfig } from "../config/age.ts";
import { Decrypter, Encrypter, generateIdentity, identityToRecipient } from "age-encryption";
import { ShinkeiError } from "../errors.ts";

export type { AgeConfig } from "../config/age.ts";
export type Encryption = { method: "recipients"; recipients: string[] } | { method: "passphrase" };

export const AGE_MAGIC = "age-encryption.org/v1";
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
  if (!(await file.exists()))
    throw new ShinkeiError("KEY_MISSING", `BACKUP_AGE_IDENTITY names ${path}, which does not exist`);
  return (await file.text())
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.startsWith("AGE-SECRET-KEY-"));
}

/** Add each private key, naming a bad one by its line only: age's own message quotes the key. */
function addIdentities(d: Decrypter, keys: string[], path: string) {
  keys.forEach((k, i) => {
    try {
      d.addIdentity(k);
    } catch {
      throw new ShinkeiError(
        "KEY_INVALID",
        `BACKUP_AGE_IDENTITY: private key ${i + 1} in ${path} is not a valid age key`,
        {
          hint: "Replace it with the key file `shinkei backup keygen` (or age-keygen) wrote. Nothing was changed.",
        },
      );
    }
  });
}

/** Whatever a library says about keys, no key text leaves this module. */
const withoutKeys = (message: string) => message.replace(/AGE-SECRET-KEY-\S*/gi, "AGE-SECRET-KEY-(hidden)");

/**
 * Decrypt a backup's bytes. Without a key, or with keys that do not open it, one error says which
 * recipients the backup was made for, so the right private key can be found.
 */
export async function decrypt(
  stream: ReadableStream<Uint8Array>,
  age: AgeConfig | undefined,
  file: string,
  made?: Encryption,
): Promise<ReadableStream<Uint8Array>> {
  const forWhom =
    made?.method === "recipients"
      ? `encrypted to ${made.recipients.join(", ")}`
      : made?.method === "passphrase"
        ? "encrypted with a passphrase"
        : "encrypted with age";
  const keys = age?.identityFile ? await identities(age.identityFile) : [];
  if (keys.length === 0 && !age?.passphrase) {
    throw new ShinkeiError("KEY_MISSING", `${file} is ${forWhom}, and no key to open it is configured`, {
      hint:
        "Set BACKUP_AGE_IDENTITY to a file holding the matching private key (or BACKUP_AGE_PASSPHRASE). " +
        "Nothing was changed.",
    });
  }
  const d = new Decrypter();
  if (keys.length) addIdentities(d, keys, age!.identityFile!);
  if (age?.passphrase) d.addPassphrase(age.passphrase);
  try {
    return await d.decrypt(stream);
  } catch (e) {
    throw new ShinkeiError(
      "DECRYPT_FAILED",
      `cannot decrypt ${file} (${forWhom}): ${withoutKeys((e as Error).message)}`,
      {
        hint: "Check BACKUP_AGE_IDENTITY or BACKUP_AGE_PASSPHRASE. Nothing was changed.",
      },
    );
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
    throw new ShinkeiError(
      "KEY_FILE_UNWRITABLE",
      e.code === "EEXIST"
        ? `${path} already exists; refusing to overwrite a key`
        : `cannot create ${path}: ${e.code ?? e.message}`,
    );
  });
  try {
    await file.writeFile(`# created: ${new Date().toISOString()}\n# public key: ${recipient}\n${identity}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  return recipient;
}
