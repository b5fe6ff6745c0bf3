/** One stored object of ours: a backup file or its manifest, by file name. */
export type StoredObject = { name: string; sizeBytes: number; modifiedAt: Date };

/**
 * Where copies of backups live. Each backup is one object named like the local file, its manifest
 * another; a store lists only names that parse as ours, so nothing else is ever touched.
 */
export interface BackupStore {
  readonly kind: string;
  /** Where it is, for messages: a folder, or s3://bucket/prefix. */
  readonly location: string;
  list(): Promise<StoredObject[]>;
  /** Copy a local file in, streamed; resolves once the stored copy is checked. */
  put(name: string, localPath: string): Promise<{ sizeBytes: number; etag?: string; verified: "etag" | "size" }>;
  /** Copy an object to a local path, streamed, through a `.partial` file. */
  get(name: string, localPath: string): Promise<void>;
  remove(name: string): Promise<void>;
}
