import { stat } from "node:fs/promises";
import { basename } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { detectFormat, plainOf, type Format } from "./decode.ts";
import { canOpen, type AgeConfig } from "../storage/crypt.ts";
import { hasValidSignature, readManifest, type Manifest } from "./manifest.ts";
import { toolPath } from "../pg/bin.ts";
import { finished, plainEnv, pump } from "../pg/tools.ts";

export type Verification = {
  file: string;
  ok: boolean;
  format: Format;
  sizeBytes: number;
  sha256: string;
  manifest: Manifest | null;
  problems: string[];
  /** Not hashed yet (`defer`): the read that uses the file takes the SHA-256 (checkedRead). */
  pending?: boolean;
};

const PLAIN_TRAILER = "-- PostgreSQL database dump complete";

/** Hash the raw bytes as they pass, so one read serves both the checksum and the readability check. */
function hashing(path: string) {
  const hasher = new Bun.CryptoHasher("sha256");
  let size = 0;
  const stream = Bun.file(path)
    .stream()
    .pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, out) {
          hasher.update(chunk);
          size += chunk.length;
          out.enqueue(chunk);
        },
      }),
    );
  return { stream, done: () => ({ sha256: hasher.digest("hex"), size }) };
}

/**
 * Read the whole file once: the SHA-256 and size against the manifest, and the content through
 * pg_restore (custom archives) or to pg_dump's closing line (plain SQL), so truncation anywhere shows.
 * With `quick`, a file whose manifest matches is only hashed: the manifest's checksum was taken of
 * a dump that pg_dump finished, so matching bytes are readable bytes (a restore uses this, and
 * still loads inside a transaction that any error rolls back).
 * With `defer` as well, a file with a manifest is not read here at all: its manifest is checked
 * (signature, name) and the SHA-256 and size are left to the caller's own read (checkedRead), which
 * must check them before anything of the file is used. A restore does this, so the read that feeds
 * its judge is the one that is hashed: one read, and the bytes checked are the bytes loaded.
 */
export async function verifyBackup(
  path: string,
  options: { quick?: boolean; defer?: boolean; env?: Record<string, string | undefined>; age?: AgeConfig } = {},
): Promise<Verification> {
  const { env } = options;
  const info = await stat(path).catch(() => null);
  if (!info?.isFile()) throw new ShinkeiError("BACKUP_NOT_FOUND", `no backup file at ${path}`);
  const manifest = await readManifest(path);
  const format = await detectFormat(path);
  const problems: string[] = [];
  if (options.quick && options.defer && manifest)
    return finish(
      path,
      format,
      manifest,
      { sha256: "", size: info.size, pending: true },
      problems,
      options.age?.manifestKey,
    );
  const raw = hashing(path);
  if (options.quick && manifest) {
    for await (const _ of raw.stream); // hash only
    return finish(path, format, manifest, raw.done(), problems, options.age?.manifestKey);
  }
  // Without the key an encrypted file cannot be read through: that is an error, not a damaged file.
  const content = await plainOf(raw.stream, path, format, options.age, manifest?.encryption);

  if (format.startsWith("custom")) {
    const p = Bun.spawn([toolPath("pg_restore", env), "--file=/dev/null"], {
      env: plainEnv(env),
      stdin: "pipe",
      stdout: "ignore",
      stderr: "pipe",
    });
    const exit = finished(p);
    try {
      await pump(content, p.stdin);
    } catch (e) {
      problems.push(`the file is damaged: ${(e as Error).message}`);
    }
    await p.stdin.end();
    const { code, stderr } = await exit;
    if (code !== 0 && problems.length === 0)
      problems.push(`pg_restore cannot read the archive: ${stderr.replace(/^pg_restore: error: /, "")}`);
  } else {
    let tail = "";
    try {
      const decoder = new TextDecoder();
      for await (const chunk of content) tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4096);
      if (!tail.includes(PLAIN_TRAILER))
        problems.push("the SQL file ends early: pg_dump's closing line is missing (truncated?)");
    } catch (e) {
      problems.push(`the file is damaged: ${(e as Error).message}`);
    }
  }

  return finish(path, format, manifest, raw.done(), problems, options.age?.manifestKey);
}

function finish(
  path: string,
  format: Format,
  manifest: Manifest | null,
  read: { sha256: string; size: number; pending?: boolean },
  problems: string[],
  manifestKey?: string,
): Verification {
  const { sha256, size, pending } = read;
  if (manifest && manifestKey && !hasValidSignature(manifest, manifestKey)) {
    problems.unshift(
      manifest.signature
        ? "the manifest's signature does not match BACKUP_MANIFEST_KEY: the manifest was altered"
        : "the manifest is not signed, and BACKUP_MANIFEST_KEY is set: it was not written by a shinkei holding the key",
    );
  } else if (manifest && manifestKey && manifest.file !== basename(path)) {
    // The signature covers the name: an old signed backup copied under a newer name is not that backup.
    problems.unshift(
      `the signed manifest is for ${manifest.file}, not ${basename(path)}: a backup copied under another name`,
    );
  }
  if (manifest && !pending) {
    if (manifest.sizeBytes !== size) problems.unshift(`size is ${size} bytes, the manifest says ${manifest.sizeBytes}`);
    else if (manifest.sha256 !== sha256)
      problems.unshift("the SHA-256 does not match the manifest: the file was altered");
  }
  return {
    file: basename(path),
    ok: problems.length === 0,
    format,
    sizeBytes: size,
    sha256,
    manifest,
    problems,
    ...(pending ? { pending } : {}),
  };
}

/**
 * The raw bytes of a file verified with `defer`, hashed as they are read; `check()`, once the stream
 * has been read to its end, compares them with the manifest (BACKUP_CORRUPT when they differ) and
 * gives the whole verification.
 */
export function checkedRead(path: string, v: Verification) {
  const raw = hashing(path);
  return {
    stream: raw.stream,
    check(): Verification {
      const checked = finish(path, v.format, v.manifest, raw.done(), [...v.problems]);
      assertVerified(checked);
      return checked;
    },
  };
}

export function assertVerified(v: Verification): void {
  if (!v.ok) {
    throw new ShinkeiError("BACKUP_CORRUPT", `${v.file} failed verification: ${v.problems.join("; ")}`, {
      hint: "Nothing was changed. Pick another backup (shinkei backup --list).",
    });
  }
}

/**
 * Check a backup we just wrote before anything is deleted: read it through when we can open it;
 * an encrypted one on a host that holds only public keys is checked by checksum and size.
 */
export async function verifyFreshBackup(path: string, age?: AgeConfig): Promise<void> {
  const made = (await readManifest(path))?.encryption;
  assertVerified(await verifyBackup(path, { quick: !canOpen(made, age), age }));
}
