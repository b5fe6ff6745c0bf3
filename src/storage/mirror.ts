import type { BackupStore } from "./store.ts";

type PutResult = Awaited<ReturnType<BackupStore["put"]>>;
type Offsite = { offsite?: Record<string, unknown> };

/**
 * Whether `record` names a checked copy in `store` itself. A copy recorded for another bucket or
 * prefix (the setting changed since) is none here: it is sent again, and retention does not take
 * the local file for safe off-site while its only copy sits where nothing lists it any more.
 */
export function copiedTo(record: Offsite, store: Pick<BackupStore, "kind" | "location">): boolean {
  const copy = record.offsite?.[store.kind] as { location?: unknown } | undefined;
  return copy !== undefined && copy.location === store.location;
}

/**
 * Put a file off-site, record the checked copy in its local record, then put that record: the one
 * way every copy goes up (backups, WAL files, base backups). If the record cannot go up, the local
 * record goes back to what it was: a copy without its record does not count, and is sent again.
 * `files` go up in order before the record; the first is the one whose copy is recorded.
 */
export async function mirror<R extends Offsite>(
  store: BackupStore,
  item: {
    files: { name: string; path: string }[];
    record: R;
    writeRecord(record: R): Promise<void>;
    /** The record's own object: its name in the store and the local file holding it. */
    recordObject: { name: string; path: string };
    /** What of the checked copy the record keeps (everything `put` reports, unless narrowed). */
    describe?: (copy: PutResult) => Record<string, unknown>;
  },
): Promise<void> {
  let copy: PutResult | undefined;
  for (const f of item.files) {
    const put = await store.put(f.name, f.path);
    copy ??= put;
  }
  const described = item.describe ? item.describe(copy!) : copy;
  const recorded = {
    ...item.record,
    offsite: {
      ...item.record.offsite,
      [store.kind]: { location: store.location, ...described, copiedAt: new Date().toISOString() },
    },
  };
  await item.writeRecord(recorded);
  try {
    await store.put(item.recordObject.name, item.recordObject.path);
  } catch (e) {
    await item.writeRecord(item.record);
    throw e;
  }
}
