import { open } from "node:fs/promises";
import { basename } from "node:path";
import { AGE_MAGIC, decrypt, type AgeConfig, type Encryption } from "../storage/crypt.ts";
import { codecOf, type Codec } from "../storage/seal.ts";

/** What a file holds, told by its first bytes rather than its name (but for what age hides). */
export type Format =
  | "custom"
  | "custom+gzip"
  | "custom+zstd"
  | "plain"
  | "plain+gzip"
  | "plain+zstd"
  | "plain+gzip+age"
  | "plain+zstd+age";

const GZIP = [0x1f, 0x8b];
const ZSTD = [0x28, 0xb5, 0x2f, 0xfd];
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

async function decompressedHead(path: string, codec: Codec, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  const reader = decompress(Bun.file(path).stream(), codec).getReader();
  try {
    while (size < n) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(Buffer.from(value));
      size += value.length;
    }
  } catch {
    // a damaged stream: whatever we got so far decides the format; verify reports the damage
  } finally {
    await reader.cancel().catch(() => {});
  }
  return Buffer.concat(chunks).subarray(0, n);
}

export async function detectFormat(path: string): Promise<Format> {
  // Only shinkei writes age files, always over compressed plain SQL, and names the codec
  // (`.sql.zst.age`, or `.sql.gz.age` before zstd): no need to decrypt to know. A file renamed to
  // the other codec fails to decompress, which verification reports as damage.
  if ((await head(path, AGE_MAGIC.length)).toString("latin1") === AGE_MAGIC) return `plain+${codecOf(path)}+age`;
  const first = await head(path, 5);
  const codec: Codec | undefined =
    first[0] === GZIP[0] && first[1] === GZIP[1] ? "gzip" : ZSTD.every((b, i) => first[i] === b) ? "zstd" : undefined;
  if (codec)
    return (await decompressedHead(path, codec, 5)).toString("latin1") === CUSTOM
      ? `custom+${codec}`
      : `plain+${codec}`;
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
  const codec = format.includes("+gzip") ? "gzip" : format.includes("+zstd") ? "zstd" : undefined;
  return codec ? decompress(opened, codec) : opened;
}

/**
 * Bun's native DecompressionStream: zstd's is about three times faster here than node:zlib's
 * stream, and a restore judges the file no faster than it is decompressed.
 */
export function decompress(stream: ReadableStream<Uint8Array>, codec: Codec): ReadableStream<Uint8Array> {
  return stream.pipeThrough(
    // bun-types names only the web's formats; Bun's DecompressionStream takes "zstd" too.
    new DecompressionStream(codec as "gzip") as unknown as TransformStream<Uint8Array, Uint8Array>,
  );
}
