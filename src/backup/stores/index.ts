import type { Config } from "../../config.ts";
import { S3Store } from "./s3.ts";
import type { BackupStore } from "./store.ts";

/** The off-site store the configuration asks for, if any. */
export function offsiteStore(config: Config): BackupStore | undefined {
  return config.s3 ? new S3Store(config.s3) : undefined;
}
