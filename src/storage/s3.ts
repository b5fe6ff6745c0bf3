import { createReadStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { createHash } from "node:crypto";
import { Transform } from "node:stream";
import type { S3Client } from "@aws-sdk/client-s3";
import type { S3Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import { backupNaming } from "./naming.ts";
import { tooLargeObject, type BackupStore, type StoredObject, type StoreNaming } from "./store.ts";
import { createPartial } from "./files.ts";

const PART_SIZE = 8 * 1024 * 1024;

/*
 * The AWS SDK is loaded on a store's first call, not with this module: its modules are the largest
 * part of the binary, and running their top level costs every command about 20 ms of CPU, most of
 * which never touch S3 (status, migrate, a local backup or restore, restore_command's WAL fetch).
 */
type Sdk = typeof import("@aws-sdk/client-s3") & Pick<typeof import("@aws-sdk/lib-storage"), "Upload">;
let sdk: Promise<Sdk> | undefined;
const loadSdk = (): Promise<Sdk> =>
  (sdk ??= Promise.all([import("@aws-sdk/client-s3"), import("@aws-sdk/lib-storage")]).then(
    ([s3, storage]) => ({ ...s3, Upload: storage.Upload }),
    (e) => {
      sdk = undefined; // the next call tries again
      throw e;
    },
  ));

/**
 * MD5s computed while the file streams out: the whole file's, and the per-part one that AWS and
 * most compatible stores use for multipart ETags. Some stores (s3rver among them) report the
 * whole-file MD5 for multipart objects too, so either may prove the copy.
 */
function etagTap() {
  const whole = createHash("md5");
  const parts: Buffer[] = [];
  let part = createHash("md5");
  let inPart = 0;
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _e, done) {
      whole.update(chunk);
      size += chunk.length;
      let offset = 0;
      while (offset < chunk.length) {
        const take = Math.min(PART_SIZE - inPart, chunk.length - offset);
        part.update(chunk.subarray(offset, offset + take));
        inPart += take;
        offset += take;
        if (inPart === PART_SIZE) {
          parts.push(part.digest());
          part = createHash("md5");
          inPart = 0;
        }
      }
      done(null, chunk);
    },
  });
  return {
    tap,
    expected() {
      if (inPart > 0 || parts.length === 0) parts.push(part.digest());
      const md5 = whole.digest("hex");
      const multipart =
        parts.length > 1 ? `${createHash("md5").update(Buffer.concat(parts)).digest("hex")}-${parts.length}` : md5;
      return { size, candidates: new Set([md5, multipart]) };
    },
  };
}

/** S3's answer for a key that is not there (404 NoSuchKey); a missing bucket is a failure instead. */
function isMissing(error: unknown): boolean {
  const e = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === "NoSuchKey" || (e.name !== "NoSuchBucket" && e.$metadata?.httpStatusCode === 404);
}

export class S3Store implements BackupStore {
  readonly kind = "s3";
  readonly location: string;
  private connected?: Promise<{ sdk: Sdk; client: S3Client }>;

  constructor(
    private readonly config: S3Config,
    readonly naming: StoreNaming = backupNaming,
  ) {
    this.location = `s3://${config.bucket}/${config.prefix}`;
  }

  /** The SDK and this store's client, made on the first call. */
  private connect() {
    const config = this.config;
    const connected = (this.connected ??= loadSdk().then((sdk) => ({
      sdk,
      client: new sdk.S3Client({
        region: config.region,
        endpoint: config.endpoint,
        forcePathStyle: config.forcePathStyle,
        credentials: config.credentials,
        // The SDK's default CRC checksums (2025) are rejected by many S3-compatible stores.
        requestChecksumCalculation: "WHEN_REQUIRED",
        responseChecksumValidation: "WHEN_REQUIRED",
        maxAttempts: 3,
      }),
    })));
    // A failure is not kept: the next call tries again.
    connected.catch(() => {
      if (this.connected === connected) this.connected = undefined;
    });
    return connected;
  }

  private key(name: string) {
    return this.config.prefix + name;
  }

  private fail(what: string, error: unknown): ShinkeiError {
    const e = error as Error & { $metadata?: { httpStatusCode?: number }; code?: string };
    const detail = e.code ?? e.name ?? "error";
    return new ShinkeiError("STORE_FAILED", `${what} at ${this.location} failed: ${e.message || detail}`, {
      cause: error,
    });
  }

  async list(): Promise<StoredObject[]> {
    const found: StoredObject[] = [];
    let token: string | undefined;
    try {
      const { sdk, client } = await this.connect();
      // Follow continuation tokens: a listing stops at 1,000 keys otherwise.
      do {
        const page = await client.send(
          new sdk.ListObjectsV2Command({
            Bucket: this.config.bucket,
            Prefix: this.config.prefix,
            ContinuationToken: token,
          }),
        );
        for (const o of page.Contents ?? []) {
          const name = o.Key!.slice(this.config.prefix.length);
          if (!name.includes("/") && this.naming.isOurs(name))
            found.push({ name, sizeBytes: o.Size ?? 0, modifiedAt: o.LastModified ?? new Date(0) });
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
    } catch (e) {
      throw this.fail("listing", e);
    }
    return found;
  }

  async put(name: string, localPath: string) {
    const check = etagTap();
    try {
      const { sdk, client } = await this.connect();
      const upload = new sdk.Upload({
        client,
        params: { Bucket: this.config.bucket, Key: this.key(name), Body: createReadStream(localPath).pipe(check.tap) },
        partSize: PART_SIZE,
        queueSize: 2,
        leavePartsOnError: false,
      });
      await upload.done();
      const head = await client.send(new sdk.HeadObjectCommand({ Bucket: this.config.bucket, Key: this.key(name) }));
      const { size, candidates } = check.expected();
      if (head.ContentLength !== size) {
        throw new ShinkeiError(
          "STORE_FAILED",
          `the copy of ${name} at ${this.location} has ${head.ContentLength} bytes, not ${size}`,
        );
      }
      const etag = head.ETag?.replaceAll('"', "");
      if (etag && /^[0-9a-f]{32}(-\d+)?$/.test(etag)) {
        if (!candidates.has(etag))
          throw new ShinkeiError(
            "STORE_FAILED",
            `the copy of ${name} at ${this.location} does not match the local file (ETag ${etag})`,
          );
        return { sizeBytes: size, etag, verified: "etag" as const };
      }
      return { sizeBytes: size, etag, verified: "size" as const };
    } catch (e) {
      throw e instanceof ShinkeiError ? e : this.fail(`uploading ${name}`, e);
    }
  }

  async get(name: string, localPath: string, options: { maxBytes?: number } = {}) {
    const partial = `${localPath}.partial`;
    const file = await createPartial(partial);
    const max = options.maxBytes ?? Number.POSITIVE_INFINITY;
    try {
      try {
        const { sdk, client } = await this.connect();
        const r = await client.send(new sdk.GetObjectCommand({ Bucket: this.config.bucket, Key: this.key(name) }));
        const body = r.Body as AsyncIterable<Uint8Array> & { destroy?: () => void };
        // Said up front, or counted as it comes (the object may change after the listing, or the length be left out).
        let size = 0;
        const tooLarge = () => {
          body.destroy?.();
          return tooLargeObject(name, this.location, max);
        };
        if ((r.ContentLength ?? 0) > max) throw tooLarge();
        for await (const chunk of body) {
          size += chunk.length;
          if (size > max) throw tooLarge();
          await file.write(chunk);
        }
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(partial, localPath);
    } catch (e) {
      await rm(partial, { force: true });
      if (isMissing(e)) throw new ShinkeiError("BACKUP_NOT_FOUND", `no ${name} at ${this.location}`, { cause: e });
      throw e instanceof ShinkeiError ? e : this.fail(`downloading ${name}`, e);
    }
  }

  async remove(name: string) {
    if (!this.naming.isOurs(name))
      throw new ShinkeiError("NOT_OURS", `refusing to delete ${name}: not a shinkei backup name`);
    try {
      const { sdk, client } = await this.connect();
      // One DeleteObject per key: the batch call requires a checksum header many compatible stores reject.
      for (const key of [name, ...this.naming.companions(name)].map((n) => this.key(n))) {
        await client.send(new sdk.DeleteObjectCommand({ Bucket: this.config.bucket, Key: key }));
      }
    } catch (e) {
      throw this.fail(`deleting ${name}`, e);
    }
  }
}
