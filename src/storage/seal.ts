import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createReadStream } from "node:fs";
import { constants, createGunzip, createGzip, createZstdCompress } from "node:zlib";
import { decrypt, encrypt, type AgeConfig, type Encryption } from "./crypt.ts";
import type { FileHandle } from "node:fs/promises";
import { createPartial } from "./files.ts";
import { collectEvery } from "../memory.ts";

export type Sealed = { bytesIn: number; sizeBytes: number; sha256: string; plainSha256?: string };

/**
 * How a stored file is compressed, from its name: `.zst` (optionally `.age` after it) is zstd,
 * anything else gzip. Dumps, the WAL archive and base backups use zstd, about five times cheaper to
 * write and to read back than gzip -6 at a similar size: what the primary's writers, a restore's
 * judge and a restore to a moment wait on. Older gzip files stay readable: their names say gzip.
 */
export type Codec = "gzip" | "zstd";
export const codecOf = (name: string): Codec => (/\.zst(\.age)?$/.test(name) ? "zstd" : "gzip");
/** A sealing process (a backup: pg_dump's output, compressed, written) stays under this (see memory.ts). */
const SEAL_MEMORY_BUDGET = 96 << 20;
/** zstd's own default: its speed is the point; higher levels cost more than gzip -6. */
const ZSTD_LEVEL = 3;

export type SealOptions = {
  codec?: Codec;
  /** The codec's level: gzip's 6 and zstd's 3 unless given. */
  level?: number;
  age?: AgeConfig;
  /** How `age` encrypts, when not its own default: manyFilesEncryption's process key. */
  encryption?: Encryption;
  /** Also the SHA-256 of the bytes before compression (a second hash pass: only where a later check uses it). */
  plainHash?: boolean;
  onProgress?: (p: { bytesIn: number; bytesOut: number }) => void;
  /** The `.partial` at `path`, reserved (made new, empty) and opened by the caller: written, synced and closed here. */
  file?: FileHandle;
};

/**
 * The one way bytes become a stored file: gzip (or zstd, see Codec), then age when `age` is given, SHA-256 of what is
 * written (and, when asked, of what came in), into `path` (created new, mode 0600, never through a
 * symbolic link) and fsynced. Renaming it into
 * place is the caller's step, so a crash never leaves a file that looks finished.
 *
 * A source already in memory (a WAL segment: 16 MiB) takes a shorter way with zstd: hashed and
 * compressed in one call each (the compression on a worker thread), then written at once. A stream
 * pipeline spends about as much CPU again moving 64 KiB chunks between its stages and writing the
 * output in many small writes; the WAL archive seals a segment for every 16 MiB the primary writes.
 */
export async function sealTo(
  source: AsyncIterable<Uint8Array> | Readable | Uint8Array,
  path: string,
  options: SealOptions,
): Promise<Sealed> {
  if (source instanceof Uint8Array) {
    if (options.codec === "zstd") return sealBytes(source, path, options);
    source = Readable.from([source]);
  }
  const plain = options.plainHash ? new Bun.CryptoHasher("sha256") : null;
  const hasher = new Bun.CryptoHasher("sha256");
  const progress = { bytesIn: 0, bytesOut: 0 };
  const file = options.file ?? (await createPartial(path));
  try {
    await pipeline(
      source instanceof Readable ? source : Readable.from(source),
      new Transform({
        transform(chunk: Buffer, _e, done) {
          progress.bytesIn += chunk.length;
          collectEvery(chunk.length, SEAL_MEMORY_BUDGET);
          plain?.update(chunk);
          done(null, chunk);
        },
      }),
      options.codec === "zstd"
        ? createZstdCompress({ params: { [constants.ZSTD_c_compressionLevel]: options.level ?? ZSTD_LEVEL } })
        : createGzip({ level: options.level ?? 6 }),
      async function* (compressed: AsyncIterable<Uint8Array>) {
        if (!options.age) yield* compressed;
        else
          yield* (await encrypt(
            Readable.toWeb(Readable.from(compressed)) as ReadableStream<Uint8Array>,
            options.age,
            options.encryption,
          )) as unknown as AsyncIterable<Uint8Array>;
      },
      new Writable({
        write(chunk: Buffer, _e, done) {
          hasher.update(chunk);
          progress.bytesOut += chunk.length;
          options.onProgress?.(progress);
          file.write(chunk).then(() => done(), done);
        },
      }),
    );
    await file.sync();
  } finally {
    await file.close().catch(() => {});
  }
  return {
    bytesIn: progress.bytesIn,
    sizeBytes: progress.bytesOut,
    sha256: hasher.digest("hex"),
    plainSha256: plain?.digest("hex"),
  };
}

async function sealBytes(bytes: Uint8Array, path: string, options: SealOptions): Promise<Sealed> {
  const plainSha256 = options.plainHash ? new Bun.CryptoHasher("sha256").update(bytes).digest("hex") : undefined;
  const compressed = await Bun.zstdCompress(bytes, { level: options.level ?? ZSTD_LEVEL });
  const hasher = new Bun.CryptoHasher("sha256");
  let bytesOut = 0;
  const file = options.file ?? (await createPartial(path));
  try {
    const write = async (chunk: Uint8Array) => {
      hasher.update(chunk);
      bytesOut += chunk.length;
      for (let at = 0; at < chunk.length; ) at += (await file.write(chunk, at)).bytesWritten;
    };
    if (!options.age) await write(compressed);
    else {
      const plain = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(compressed);
          c.close();
        },
      });
      for await (const chunk of (await encrypt(
        plain,
        options.age,
        options.encryption,
      )) as unknown as AsyncIterable<Uint8Array>)
        await write(chunk);
    }
    await file.sync();
  } finally {
    await file.close().catch(() => {});
  }
  options.onProgress?.({ bytesIn: bytes.length, bytesOut });
  return { bytesIn: bytes.length, sizeBytes: bytesOut, sha256: hasher.digest("hex"), plainSha256 };
}

/**
 * The plain bytes of a sealed file: age-decrypted when `encryption` says so (keys from `age`),
 * then decompressed as its name says (codecOf), unless `compressed` asks for the compressed stream
 * itself (for a reader that decompresses it in a process of its own, such as `tar -xz`). The
 * caller checks whatever hash it holds for them.
 */
export async function unsealFrom(
  path: string,
  options: { encryption?: Encryption; age?: AgeConfig; name: string; compressed?: boolean },
): Promise<Readable> {
  const zstd = codecOf(options.name) === "zstd" && !options.compressed;
  let source: Readable = createReadStream(path);
  let web: ReadableStream<Uint8Array> | null = null;
  if (options.encryption) {
    web = await decrypt(
      Readable.toWeb(source) as ReadableStream<Uint8Array>,
      options.age,
      options.name,
      options.encryption,
    );
    if (!zstd) source = Readable.fromWeb(web as import("node:stream/web").ReadableStream);
  }
  if (zstd) {
    // Bun's native DecompressionStream: zstd's is about three times faster than node:zlib's
    // stream (a base backup's check unpacks all of it; see also backup/decode.ts).
    const plain = (web ?? (Readable.toWeb(source) as ReadableStream<Uint8Array>)).pipeThrough(
      // bun-types names only the web's formats; Bun's DecompressionStream takes "zstd" too.
      new DecompressionStream("zstd" as "gzip") as unknown as TransformStream<Uint8Array, Uint8Array>,
    );
    return Readable.fromWeb(plain as import("node:stream/web").ReadableStream);
  }
  if (options.compressed) return source;
  return source.pipe(createGunzip());
}

/**
 * unsealFrom for a zstd file already in memory (a WAL segment): decrypted, then decompressed in
 * one native call. Streaming a segment through node:stream stages, 64 KiB at a time, cost about
 * as much CPU again as the decryption itself, for every segment a recovery replays. The caller
 * checks whatever hash it holds for the bytes returned, as with unsealFrom.
 */
export async function unsealBytes(
  bytes: Uint8Array,
  options: { encryption?: Encryption; age?: AgeConfig; name: string; maxBytes: number },
): Promise<Uint8Array> {
  if (codecOf(options.name) !== "zstd") throw new Error(`unsealBytes reads zstd files only, not ${options.name}`);
  let compressed = bytes;
  if (options.encryption) {
    const whole = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes);
        c.close();
      },
    });
    compressed = await Bun.readableStreamToBytes(await decrypt(whole, options.age, options.name, options.encryption));
  }
  // Streamed out of memory, not one zstdDecompress call: that has no limit, and a planted file of
  // a few MiB can ask for gigabytes. More than maxBytes (its record's size) is refused as it comes.
  const out: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of new Blob([compressed]).stream().pipeThrough(
    // bun-types names only the web's formats; Bun's DecompressionStream takes "zstd" too.
    new DecompressionStream("zstd" as "gzip") as unknown as TransformStream<Uint8Array, Uint8Array>,
  ) as unknown as AsyncIterable<Uint8Array>) {
    size += chunk.length;
    if (size > options.maxBytes) throw new TooLarge(options.name, options.maxBytes);
    out.push(chunk);
  }
  return Buffer.concat(out, size);
}

/** A stored file that decompresses to more than its record says: refused before it is all in memory. */
export class TooLarge extends Error {
  constructor(name: string, maxBytes: number) {
    super(`${name} decompresses to more than the ${maxBytes} bytes its record says`);
  }
}
