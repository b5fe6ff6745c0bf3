import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { generateIdentity, identityToRecipient } from "age-encryption";
import { parseRecipients } from "../src/config/age.ts";
import { tempDir } from "./support/fixtures.ts";

// BACKUP_AGE_RECIPIENTS: public keys inline, or the path of a file of them.

const identities = await Promise.all([1, 2, 3].map(() => generateIdentity()));
const keys = await Promise.all(identities.map((i) => identityToRecipient(i)));
const readFile = (path: string) => readFileSync(path, "utf8");
/** For values that must never be taken for a path. */
const noFile = (path: string): string => {
  throw new Error(`read ${path}`);
};

async function keyFile(text: string): Promise<string> {
  const path = join(await tempDir("recipients"), "recipients.txt");
  await writeFile(path, text);
  return path;
}

test("inline keys: one, or several separated by spaces, commas or newlines; no file is read", () => {
  expect(parseRecipients(keys[0]!, noFile)).toEqual([keys[0]!]);
  expect(parseRecipients(` ${keys[0]} ${keys[1]}\t${keys[2]} `, noFile)).toEqual(keys);
  expect(parseRecipients(`${keys[0]},${keys[1]}, ${keys[2]}`, noFile)).toEqual(keys);
  expect(parseRecipients(`${keys[0]}\n${keys[1]}`, noFile)).toEqual(keys.slice(0, 2));
});

test("an inline key that only looks like one is named by its first 24 characters", () => {
  const bad = `age1${"x".repeat(10)}`;
  expect(() => parseRecipients(`${keys[0]} ${bad}`, noFile)).toThrow(`"${bad}" is not an age public key (age1...)`);
  const long = `age1${keys[1]!.slice(4).toUpperCase()}`; // a real key's length, in the wrong case
  expect(() => parseRecipients(long, noFile)).toThrow(`"${long.slice(0, 24)}" is not an age public key (age1...)`);
  expect(() => parseRecipients(long, noFile)).not.toThrow(long.slice(24));
});

test("a file: comments, blank lines, indentation and CRLF endings are fine; keys keep their order", async () => {
  const path = await keyFile(`# ops team\r\n\r\n  ${keys[2]}\r\n${keys[0]}  \r\n# old laptop, gone\r\n${keys[1]}\r\n`);
  expect(parseRecipients(path, readFile)).toEqual([keys[2]!, keys[0]!, keys[1]!]);
});

test("a private key in the file is named by its line only, and sent where it belongs", async () => {
  const secret = identities[0]!;
  const path = await keyFile(`# team\n${keys[0]}\n${secret}\n`);
  let message = "";
  try {
    parseRecipients(path, readFile);
  } catch (e) {
    message = (e as Error).message;
  }
  expect(message).toBe(`file ${path}: line 3 is a private key: it belongs in BACKUP_AGE_IDENTITY, never here`);
  for (const part of [secret, secret.slice(0, 20), secret.slice(-20)]) expect(message).not.toContain(part);
});

test("any other bad line is named by its number, never quoted", async () => {
  const path = await keyFile(`${keys[0]}\npassword=hunter2\n`);
  expect(() => parseRecipients(path, readFile)).toThrow(`file ${path}: line 2 is not an age public key (age1...)`);
  expect(() => parseRecipients(path, readFile)).not.toThrow("hunter2");
  // A value that is neither keys nor a readable file: the reader's own error, naming the path.
  expect(() => parseRecipients(`${keys[0]} not-a-key`, readFile)).toThrow("no such file or directory");
});

test("a file with no keys in it is an error, not an empty list", async () => {
  const path = await keyFile("# nobody yet\n\n");
  expect(() => parseRecipients(path, readFile)).toThrow(`file ${path} holds no age public keys`);
});
