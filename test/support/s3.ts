import S3rver from "s3rver";
import { createHash, randomUUID } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import type { S3Config } from "../../src/config/index.ts";
import { tempDir } from "./fixtures.ts";

/**
 * A real S3-protocol server on loopback (s3rver), one per test file, with its own bucket.
 * `stop()` and `start()` take it down and back on the same port, for outage tests.
 */
export class TestS3 {
  private server?: S3rver;
  port = 0;
  private constructor(
    private readonly dir: string,
    readonly bucket: string,
  ) {}

  static async start(): Promise<TestS3> {
    const s = new TestS3(await tempDir("s3"), `shinkei-${crypto.randomUUID().slice(0, 8)}`);
    await s.start();
    await s.client().send(new CreateBucketCommand({ Bucket: s.bucket }));
    return s;
  }

  async start() {
    this.server = new S3rver({ address: "127.0.0.1", port: this.port, silent: true, directory: this.dir });
    readAfterWrite((this.server as unknown as { store: S3rverStore }).store);
    const { port } = await this.server.run();
    this.port = port;
  }

  async stop() {
    await this.server?.close();
    this.server = undefined;
  }

  get endpoint() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The environment a shinkei process needs to use this server. */
  env(prefix = "backups/"): Record<string, string> {
    return {
      S3_BUCKET: this.bucket,
      S3_PREFIX: prefix,
      S3_ENDPOINT: this.endpoint,
      S3_FORCE_PATH_STYLE: "true",
      S3_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "S3RVER",
      AWS_SECRET_ACCESS_KEY: "S3RVER",
    };
  }

  config(prefix = "backups/"): S3Config {
    return {
      bucket: this.bucket,
      prefix,
      endpoint: this.endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      keepDays: 30,
      credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    };
  }

  client() {
    return new S3Client({
      region: "us-east-1",
      endpoint: this.endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    });
  }
}

type S3rverStore = {
  getResourcePath(bucket: string, key: string, resource: string): string;
  putMetadata(bucket: string, key: string, metadata: unknown, md5: string): Promise<void>;
  putObject(object: {
    bucket: string;
    key: string;
    content: Buffer | NodeJS.ReadableStream;
    metadata: unknown;
  }): Promise<{ size: number; md5: string }>;
};

/**
 * s3rver answers a PUT once the body has passed its hashing stream, before its file stream has
 * written it: a HEAD right after (as every upload's check does) can find the object truncated to
 * 0 bytes, and two PUTs of one key interleave in one file. Real S3 reads its own writes and never
 * shows a partial object; so here the body is written whole to a file beside the object, then
 * renamed over it (a name that does not end in `._S3rver_object`, so no listing shows it).
 */
function readAfterWrite(store: S3rverStore) {
  store.putObject = async function (object) {
    const path = this.getResourcePath(object.bucket, object.key, "object");
    await mkdir(dirname(path), { recursive: true });
    const incoming = `${path}.incoming-${randomUUID()}`;
    const md5 = createHash("md5");
    let size = 0;
    const source = Buffer.isBuffer(object.content) ? Readable.from([object.content]) : (object.content as Readable);
    try {
      await pipeline(
        source,
        new Transform({
          transform(chunk: Buffer, _encoding, done) {
            md5.update(chunk);
            size += chunk.length;
            done(null, chunk);
          },
        }),
        createWriteStream(incoming),
      );
      await rename(incoming, path);
    } catch (e) {
      await rm(incoming, { force: true });
      throw e;
    }
    const digest = md5.digest("hex");
    await this.putMetadata(object.bucket, object.key, object.metadata, digest);
    return { size, md5: digest };
  };
}
