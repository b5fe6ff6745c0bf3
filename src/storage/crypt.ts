import { open } from "node:fs/promises";
import type { AgeConfig } from "../config/age.ts";
import type { Decrypter } from "age-encryption";
import { ShinkeiError } from "../errors.ts";

export type { AgeConfig } from "../config/age.ts";
/**
 * How a file was encrypted. `wrappedKey` (passphrase only): the file is encrypted to an X25519 key
 * of one writing process, and this is that key's identity, age-encrypted with the passphrase
 * (base64). See `manyFilesEncryption`.
 */
export type Encryption = { method: "recipients"; recipients: string[] } | { method: "passphrase"; wrappedKey?: string };

export const AGE_MAGIC = "age-encryption.org/v1";

/*
 * age, and the curve arithmetic under it, loads when a file is first encrypted or opened: its
 * modules' top level costs every command several ms of CPU, and most runs never encrypt anything.
 */
const ageLib = () => import("age-encryption");
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

/**
 * Encrypt for `age`'s recipients or passphrase; with `made` from `manyFilesEncryption`, to that
 * encryption's process key.
 */
export async function encrypt(
  stream: ReadableStream<Uint8Array>,
  age: AgeConfig,
  made?: Encryption,
): Promise<ReadableStream<Uint8Array>> {
  const { Encrypter } = await ageLib();
  const e = new Encrypter();
  const wrapped = made?.method === "passphrase" ? made.wrappedKey : undefined;
  if (wrapped) {
    const own = await processKey(age.passphrase!);
    if (own.wrappedKey !== wrapped) throw new Error("a wrapped key of another process cannot encrypt here");
    e.addRecipient(own.recipient);
  } else if (age.recipients.length) for (const r of age.recipients) e.addRecipient(r);
  else e.setPassphrase(age.passphrase!);
  return e.encrypt(stream);
}

/*
 * A passphrase costs a scrypt derivation (work factor 2^18, about a second of CPU) for every file
 * it encrypts and again for every file it opens: that is age's defence against guessing, and it
 * is per file because every file has a salt of its own. For the WAL archive, which seals a file
 * for every 16 MiB the primary writes and opens one for every segment a recovery replays, that
 * would take a core of the primary's host and add a second per segment to a restore. So a process
 * that seals many files makes one X25519 key, encrypts it once with the passphrase (the same
 * scrypt, once), and encrypts its files to that key; each file's record carries the wrapped key,
 * and a reader unwraps each distinct one once. Opening still takes nothing but the passphrase,
 * and a record's signature covers its wrapped key. Dumps and base backups, one file at a time
 * and meant to open with `age -d` alone, keep the passphrase itself.
 */
type ProcessKey = { identity: string; recipient: string; wrappedKey: string };
/** By passphrase: a process given another one (a test, a reloaded configuration) keeps both apart. */
const ownKeys = new Map<string, Promise<ProcessKey>>();

function processKey(passphrase: string): Promise<ProcessKey> {
  let key = ownKeys.get(passphrase);
  if (!key) {
    key = (async () => {
      const { Encrypter, generateIdentity, identityToRecipient } = await ageLib();
      const identity = await generateIdentity();
      const e = new Encrypter();
      e.setPassphrase(passphrase); // age's default work factor, 2^18: unwrap refuses more
      const wrappedKey = Buffer.from(await e.encrypt(identity)).toString("base64");
      return { identity, recipient: await identityToRecipient(identity), wrappedKey };
    })();
    key.catch(() => ownKeys.delete(passphrase));
    ownKeys.set(passphrase, key);
  }
  return key;
}

/** How a process that seals many files (the WAL archive) encrypts them: see ProcessKey above. */
export async function manyFilesEncryption(age: AgeConfig | undefined): Promise<Encryption | undefined> {
  const made = encryptionFor(age);
  if (made?.method !== "passphrase") return made;
  return { method: "passphrase", wrappedKey: (await processKey(age!.passphrase!)).wrappedKey };
}

/** A wrapped key as a record carries it: base64 of a small age file, nothing else. */
export const WRAPPED_KEY = /^[A-Za-z0-9+/]{100,2000}={0,2}$/;

/** Identities unwrapped by this process, by wrapped key: one scrypt each. A few: one per writing process. */
const unwrapped = new Map<string, Promise<string>>();
const UNWRAPPED_MAX = 64;

/** What we write: age's default scrypt work factor. A wrapped key asking more is not ours (and costs up to 1 GiB). */
const WRAP_MAX_LOG_N = 18;

function unwrap(wrappedKey: string, passphrase: string): Promise<string> {
  const key = `${wrappedKey}\0${passphrase}`;
  let got = unwrapped.get(key);
  if (!got) {
    if (unwrapped.size >= UNWRAPPED_MAX) unwrapped.delete(unwrapped.keys().next().value!);
    const bytes = Buffer.from(wrappedKey, "base64");
    const logN = /^-> scrypt \S+ (\d+)$/m.exec(bytes.subarray(0, 200).toString("latin1"))?.[1];
    got =
      logN === undefined || Number(logN) > WRAP_MAX_LOG_N
        ? Promise.reject(new Error("the wrapped key is not a passphrase-encrypted key of ours"))
        : (async () => {
            const d = new (await ageLib()).Decrypter();
            d.addPassphrase(passphrase);
            const identity = (await d.decrypt(bytes, "text")).trim();
            if (!/^AGE-SECRET-KEY-1[0-9A-Z]+$/.test(identity))
              throw new Error("the wrapped key is not an age identity");
            return identity;
          })();
    got.catch(() => unwrapped.delete(key));
    unwrapped.set(key, got);
  }
  return got;
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
    made?.method === "recipients" && Array.isArray(made.recipients)
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
  const d = new (await ageLib()).Decrypter();
  if (keys.length) addIdentities(d, keys, age!.identityFile!);
  const wrapped = made?.method === "passphrase" ? made.wrappedKey : undefined;
  // Only the WAL archive writes wrapped keys, and its records are checked as read; a manifest is not.
  if (wrapped !== undefined && !(typeof wrapped === "string" && WRAPPED_KEY.test(wrapped)))
    throw new ShinkeiError("DECRYPT_FAILED", `cannot decrypt ${file}: its record's wrapped key is not one`, {
      hint: "The record was altered or is not ours. Nothing was changed.",
    });
  try {
    if (wrapped && age?.passphrase) d.addIdentity(await unwrap(wrapped, age.passphrase));
    else if (age?.passphrase) d.addPassphrase(age.passphrase);
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
  const { generateIdentity, identityToRecipient } = await ageLib();
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
