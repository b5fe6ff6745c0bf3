import { open } from "node:fs/promises";
import { basename } from "node:path";
import { AGE_MAGIC, decrypt, type AgeConfig, type Encryption } from "../storage/crypt.ts";

/** What a file holds, told by its first bytes rather than its name. */
export type Format = "custom" | "custom+gzip" | "plain" | "plain+gzip" | "plain+gzip+age";

const GZIP = [0x1f, 0x8b];
const CUSTOM = "PGDMP";

async function head(path: string, n: number): Promise<Buffer> {
  const f = await open(path, "r");
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await f.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await f.close();
  }
}

async function gunzippedHead(path: string, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  const reader = gunzip(Bun.file(path).stream()).getReader();
  try {
    while (size < n) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(Buffer.from(value));
      size += value.length;
    }
  } catch {
    // a damaged gzip stream: whatever we got so far decides the format; verify reports the damage
  } finally {
    await reader.cancel().catch(() => {});
  }
  return Buffer.concat(chunks).subarray(0, n);
}

export async function detectFormat(path: string): Promise<Format> {
  // Only shinkei writes age files, and always over gzipped plain SQL: no need to decrypt to know.
  if ((await head(path, AGE_MAGIC.length)).toString("latin1") === AGE_MAGIC) return "plain+gzip+age";
  const first = await head(path, 5);
  if (first[0] === GZIP[0] && first[1] === GZIP[1]) {
    return (await gunzippedHead(path, 5)).toString("latin1") === CUSTOM ? "custom+gzip" : "plain+gzip";
  }
  return first.toString("latin1") === CUSTOM ? "custom" : "plain";
}

/**
 * The file's content without encryption and gzip; damage or truncation throws while iterating
 * (age authenticates every 64 KiB chunk and marks the last one).
 */
export async function content(
  path: string,
  format: Format,
  age?: AgeConfig,
  made?: Encryption,
): Promise<ReadableStream<Uint8Array>> {
  return plainOf(Bun.file(path).stream(), path, format, age, made);
}

export async function plainOf(
  raw: ReadableStream<Uint8Array>,
  path: string,
  format: Format,
  age?: AgeConfig,
  made?: Encryption,
): Promise<ReadableStream<Uint8Array>> {
  const opened = format.endsWith("+age") ? await decrypt(raw, age, basename(path), made) : raw;
  return format.includes("+gzip") ? gunzip(opened) : opened;
}

export function gunzip(stream: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  return stream.pipeThrough(new DecompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>);
}
