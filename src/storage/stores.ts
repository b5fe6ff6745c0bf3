import type { Config } from "../config/index.ts";
import { backupNaming } from "./naming.ts";
import { S3Store } from "./s3.ts";
import type { BackupStore, StoreNaming } from "./store.ts";

/** Where in the off-site store a kind of copy lives: a folder under S3_PREFIX, and which names are its own. */
export type StoreLayout = { folder: string; naming: StoreNaming };
export const backupLayout: StoreLayout = { folder: "", naming: backupNaming };

/** The one place an off-site store is built from the configuration: none when S3 is not configured. */
export function offsiteStore(config: Pick<Config, "s3">, layout: StoreLayout = backupLayout): BackupStore | undefined {
  return config.s3
    ? new S3Store({ ...config.s3, prefix: `${config.s3.prefix}${layout.folder}` }, layout.naming)
    : undefined;
}
