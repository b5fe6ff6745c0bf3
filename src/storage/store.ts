import { ShinkeiError } from "../errors.ts";

/**
 * Which object names a store may list and delete, and what goes with each (a backup's manifest, a
 * WAL file's record): backups and the WAL archive share the interface and differ only in this.
 */
export type StoreNaming = { isOurs(name: string): boolean; companions(name: string): string[] };

/** One stored object of ours: a backup file or its manifest, by file name. */
export type StoredObject = { name: string; sizeBytes: number; modifiedAt: Date };

/**
 * Where copies of backups live. Each backup is one object named like the local file, its manifest
 * another; a store lists only names that parse as ours, so nothing else is ever touched.
 *
 * Every backend answers alike (one contract suite runs against each): `get` of a missing object
 * is BACKUP_NOT_FOUND, `remove` of one is no error, and a store that cannot be reached or read is
 * STORE_FAILED, never an empty answer.
 */
export interface BackupStore {
  readonly kind: string;
  /** Where it is, for messages: a folder, or s3://bucket/prefix. */
  readonly location: string;
  /** Which names are ours here: only those are listed, and only those (with their companions) removed. */
  readonly naming: StoreNaming;
  /**
   * Our objects, in no particular order. A folder or prefix that does not exist yet holds none
   * ([]); one that cannot be read (not a folder, no such bucket, no access) is STORE_FAILED.
   */
  list(): Promise<StoredObject[]>;
  /** Copy a local file in, streamed; resolves once the stored copy is checked. Replaces an object of the same name. */
  put(name: string, localPath: string): Promise<{ sizeBytes: number; etag?: string; verified: "etag" | "size" }>;
  /**
   * Copy an object to a local path, streamed, through a `.partial` file. A missing object is
   * BACKUP_NOT_FOUND, and leaves neither the file nor its `.partial` behind. One larger than
   * `maxBytes` is BACKUP_CORRUPT (TooLargeObject), stopped as soon as that shows, and leaves nothing:
   * whoever can write to the bucket must not fill a disk or memory with what should be a record.
   */
  get(name: string, localPath: string, options?: { maxBytes?: number }): Promise<void>;
  /**
   * Delete an object and its companions (a backup and its manifest). Either or both already gone is
   * no error (a retention run cut short is simply run again). A name that is not ours is NOT_OURS,
   * and nothing is deleted.
   */
  remove(name: string): Promise<void>;
}

/**
 * The most a record read from a store may hold (a backup's manifest, a base backup's, a WAL file's
 * record, a recovery record): far more than any shinkei writes (a manifest's counts and digests of
 * tens of thousands of tables), far less than a planted object could.
 */
export const RECORD_MAX_BYTES = 64 << 20;

/** What `get` throws for an object larger than `maxBytes`. */
export class TooLargeObject extends ShinkeiError {
  constructor(name: string, location: string, maxBytes: number) {
    super(
      "BACKUP_CORRUPT",
      `${name} at ${location} has more than the ${maxBytes} bytes it may have: not fetched (a planted object?)`,
    );
  }
}
export const tooLargeObject = (name: string, location: string, maxBytes: number) =>
  new TooLargeObject(name, location, maxBytes);
