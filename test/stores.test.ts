import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { LocalStore } from "../src/storage/local.ts";
import { S3Store } from "../src/storage/s3.ts";
import type { BackupStore, StoreNaming } from "../src/storage/store.ts";
import { MANIFEST_SUFFIX, backupName, backupNaming } from "../src/storage/naming.ts";
import { walNaming } from "../src/wal/offsite.ts";
import { tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";

/**
 * One contract, every backend: what BackupStore's doc comments promise, checked against a local
 * folder and a real S3-protocol server alike. A new backend gets a row in `backends`, nothing else.
 */
type Backend = {
  kind: string;
  /** A new, empty store (for a folder: one that does not exist yet). */
  empty(naming: StoreNaming): Promise<BackupStore>;
  /** A store that cannot be read: a file where the folder should be, a bucket that does not exist. */
  unreadable(naming: StoreNaming): Promise<BackupStore>;
  /** How `put` proves the copy. */
  verified: "etag" | "size";
};

let s3: TestS3;
beforeAll(async () => {
  s3 = await TestS3.start();
});
afterAll(() => s3.stop());

const backends: Backend[] = [
  {
    kind: "local folder",
    empty: async (naming) => new LocalStore(join(await tempDir("store"), "copies"), naming),
    async unreadable(naming) {
      const file = join(await tempDir("store-file"), "not-a-folder");
      await writeFile(file, "a file, not a folder");
      return new LocalStore(file, naming);
    },
    verified: "size",
  },
  {
    kind: "S3",
    empty: async (naming) => new S3Store(s3.config(`contract-${crypto.randomUUID().slice(0, 8)}/`), naming),
    unreadable: async (naming) =>
      new S3Store({ ...s3.config(), bucket: `missing-${crypto.randomUUID().slice(0, 8)}` }, naming),
    verified: "etag",
  },
];

/**
 * The same contract under each naming a store is built with: backups (a file and its manifest)
 * and the WAL archive (a sealed WAL file and its record).
 */
type Names = {
  kind: string;
  naming: StoreNaming;
  name: string;
  companion: (name: string) => string;
  other: string;
  never: string;
  notOurs: string[];
};
const backupFile = backupName(new Date(Date.UTC(2026, 0, 2, 3, 4, 5)));
const namings: Names[] = [
  {
    kind: "backup",
    naming: backupNaming,
    name: backupFile,
    companion: (n) => n + MANIFEST_SUFFIX,
    other: backupName(new Date(Date.UTC(2026, 0, 3))),
    never: backupName(new Date(Date.UTC(2020, 0, 1))),
    notOurs: [
      "notes.txt",
      "shinkei_backup_old_manual.sql.gz",
      `${backupFile}.bak`,
      "shinkei_backup_20260230_000000.sql.gz",
    ],
  },
  {
    kind: "WAL",
    naming: walNaming,
    name: "000000010000000000000002.gz",
    companion: (n) => n.replace(/\.gz(?:\.age)?$/, ".json"),
    other: "000000010000000000000003.gz.age",
    never: "000000010000000000000001.gz",
    notOurs: [
      "notes.txt",
      "000000010000000000000002",
      "000000010000000000000002.gz.bak",
      backupFile,
      "shinkei_base_latest.tar.gz",
    ],
  },
];

/** A local file holding `content`, to put into a store. */
async function source(content: string): Promise<string> {
  const path = join(await tempDir("store-src"), "file");
  await writeFile(path, content);
  return path;
}

const listed = async (store: BackupStore) => (await store.list()).map((o) => [o.name, o.sizeBytes] as const).sort();

for (const backend of backends) {
  for (const { kind, naming, name, companion, other, never, notOurs } of namings) {
    const manifest = companion(name);
    describe(`the ${backend.kind} store with the ${kind} naming`, () => {
      test("a new store holds nothing", async () => {
        expect(await (await backend.empty(naming)).list()).toEqual([]);
      });

      test("put, list, get: the bytes come back whole, listed by name and size", async () => {
        const store = await backend.empty(naming);
        const copy = await store.put(name, await source("backup bytes"));
        expect(copy).toMatchObject({ sizeBytes: 12, verified: backend.verified });
        await store.put(manifest, await source("{}"));
        expect(await listed(store)).toEqual([
          [name, 12],
          [manifest, 2],
        ]);
        const modified = (await store.list())[0]!.modifiedAt;
        expect(Math.abs(modified.getTime() - Date.now())).toBeLessThan(10 * 60_000);

        const into = await tempDir("store-get");
        await store.get(name, join(into, name));
        expect(await readFile(join(into, name), "utf8")).toBe("backup bytes");
        expect(await readdir(into)).toEqual([name]); // no .partial left behind
      });

      test("put replaces an object of the same name", async () => {
        const store = await backend.empty(naming);
        await store.put(name, await source("the first, longer copy"));
        await store.put(name, await source("second"));
        expect(await listed(store)).toEqual([[name, 6]]);
        const into = join(await tempDir("store-get"), name);
        await store.get(name, into);
        expect(await readFile(into, "utf8")).toBe("second");
      });

      test("a store reads its own writes: one name put again and again, each copy checked whole once up", async () => {
        // put's own check (size, ETag) reads the object right after writing it; on a store that
        // answered before its bytes were down, a replaced object showed 0 bytes now and then.
        const store = await backend.empty(naming);
        const files = await Promise.all(["a", "b"].map((c, i) => source(c.repeat(200_000 + i * 1000))));
        for (let i = 0; i < 40; i++) {
          expect((await store.put(name, files[i % 2]!)).sizeBytes).toBe(200_000 + (i % 2) * 1000);
        }
        expect(await listed(store)).toEqual([[name, 201_000]]);
      });

      test("names that are not ours are never listed", async () => {
        const store = await backend.empty(naming);
        for (const stranger of notOurs) {
          await store.put(stranger, await source("not ours"));
        }
        await store.put(name, await source("ours"));
        expect(await listed(store)).toEqual([[name, 4]]);
      });

      test("get of a missing object is BACKUP_NOT_FOUND, and leaves no file and no .partial", async () => {
        const store = await backend.empty(naming);
        const into = await tempDir("store-get");
        await expect(store.get(name, join(into, name))).rejects.toMatchObject({
          code: "BACKUP_NOT_FOUND",
          message: `no ${name} at ${store.location}`,
        });
        // A backup whose manifest is missing: the same answer for the manifest.
        await store.put(name, await source("backup bytes"));
        await expect(store.get(manifest, join(into, manifest))).rejects.toMatchObject({
          code: "BACKUP_NOT_FOUND",
          message: `no ${manifest} at ${store.location}`,
        });
        expect(await readdir(into)).toEqual([]);
      });

      test("get of an object larger than maxBytes is BACKUP_CORRUPT, and leaves no file and no .partial", async () => {
        const store = await backend.empty(naming);
        const into = await tempDir("store-get-max");
        await store.put(name, await source("twelve bytes"));
        await expect(store.get(name, join(into, name), { maxBytes: 11 })).rejects.toMatchObject({
          code: "BACKUP_CORRUPT",
          message:
            `${name} at ${store.location} has more than the 11 bytes it may have: not fetched (a planted ` + "object?)",
        });
        expect(await readdir(into)).toEqual([]);
        await store.get(name, join(into, name), { maxBytes: 12 });
        expect(await readFile(join(into, name), "utf8")).toBe("twelve bytes");
      });

      test("remove deletes a backup and its manifest; what is already gone is no error", async () => {
        const store = await backend.empty(naming);
        await store.put(name, await source("backup bytes"));
        await store.put(manifest, await source("{}"));
        await store.put(other, await source("another backup"));
        await store.remove(name);
        expect(await listed(store)).toEqual([[other, 14]]);
        await store.remove(name); // both gone already
        await store.put(companion(other), await source("{}"));
        await store.remove(never); // never there
        expect(await listed(store)).toEqual([
          [other, 14],
          [companion(other), 2],
        ]);
      });

      test("remove refuses a name that is not ours, and deletes nothing", async () => {
        const store = await backend.empty(naming);
        await store.put("notes.txt", await source("someone's notes"));
        await expect(store.remove("notes.txt")).rejects.toMatchObject({
          message: "refusing to delete notes.txt: not a shinkei backup name",
        });
        const into = join(await tempDir("store-get"), "notes.txt");
        await store.get("notes.txt", into);
        expect(await readFile(into, "utf8")).toBe("someone's notes");
      });

      test("a store that cannot be read is STORE_FAILED for every method, never empty or not found", async () => {
        const store = await backend.unreadable(naming);
        const failed = { code: "STORE_FAILED", message: expect.stringContaining(store.location) };
        await expect(store.list()).rejects.toMatchObject(failed);
        const into = await tempDir("store-get");
        await expect(store.get(name, join(into, name))).rejects.toMatchObject(failed);
        await expect(store.put(name, await source("backup bytes"))).rejects.toMatchObject(failed);
        await expect(store.remove(name)).rejects.toMatchObject(failed);
        expect(await readdir(into)).toEqual([]);
      });
    });
  }
}
