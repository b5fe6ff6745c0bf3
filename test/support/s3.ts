import S3rver from "s3rver";
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
  private constructor(private readonly dir: string, readonly bucket: string) {}

  static async start(): Promise<TestS3> {
    const s = new TestS3(await tempDir("s3"), `shinkei-${crypto.randomUUID().slice(0, 8)}`);
    await s.start();
    await s.client().send(new CreateBucketCommand({ Bucket: s.bucket }));
    return s;
  }

  async start() {
    this.server = new S3rver({ address: "127.0.0.1", port: this.port, silent: true, directory: this.dir });
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
    return new S3Client({ region: "us-east-1", endpoint: this.endpoint, forcePathStyle: true, credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" } });
  }
}
