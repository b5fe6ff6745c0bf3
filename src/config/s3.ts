import * as v from "valibot";
import { bool, optionalHttpUrl, optionalInt, optionalText, text, type Values } from "./values.ts";

/** Off-site copies in an S3-compatible bucket, on when S3_BUCKET is set. */
export const entries = {
  S3_BUCKET: optionalText(),
  S3_PREFIX: v.pipe(
    v.optional(v.string(), ""),
    v.trim(),
    v.check((s) => !s.startsWith("/"), "must not start with /"),
  ),
  S3_ENDPOINT: optionalHttpUrl(),
  S3_REGION: text("us-east-1"),
  S3_FORCE_PATH_STYLE: bool(false),
  S3_KEEP_DAYS: optionalInt(1, 36_500),
  AWS_ACCESS_KEY_ID: optionalText(),
  AWS_SECRET_ACCESS_KEY: optionalText(),
  AWS_SESSION_TOKEN: optionalText(),
};

export type S3Config = {
  bucket: string;
  prefix: string;
  endpoint?: string;
  region: string;
  forcePathStyle: boolean;
  keepDays: number;
  /** Only when given in the environment; otherwise the AWS SDK's own chain (profiles, roles) applies. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
};

/** Off-site retention defaults to the local one (BACKUP_KEEP_DAYS). */
export function read(r: Values<typeof entries>, backupKeepDays: number): { s3?: S3Config } {
  if (!r.S3_BUCKET) return { s3: undefined };
  return {
    s3: {
      bucket: r.S3_BUCKET,
      prefix: r.S3_PREFIX,
      endpoint: r.S3_ENDPOINT,
      region: r.S3_REGION,
      forcePathStyle: r.S3_FORCE_PATH_STYLE,
      keepDays: r.S3_KEEP_DAYS ?? backupKeepDays,
      credentials:
        r.AWS_ACCESS_KEY_ID && r.AWS_SECRET_ACCESS_KEY
          ? {
              accessKeyId: r.AWS_ACCESS_KEY_ID,
              secretAccessKey: r.AWS_SECRET_ACCESS_KEY,
              sessionToken: r.AWS_SESSION_TOKEN,
            }
          : undefined,
    },
  };
}
