import { constants, createReadStream } from "node:fs";
import { copyFile, lstat, lutimes, open, rename, rm, stat, readdir, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ShinkeiError } from "../errors.ts";

/**
 * Clear the way for a new `.partial` file: a plain file there is a crashed write's leftover and
 * goes; anything else (a symbolic link planted by whoever can write to the folder) is refused,
 * never followed. Callers then create it with O_EXCL, which fails rather than follow a link
 * that appears in between.
 */
async function preparePartial(partial: string): Promise<void> {
  const existing = await lstat(partial).catch(() => null);
  if (existing && !existing.isFile()) {
    throw new ShinkeiError(
      "UNSAFE_PATH",
      `${partial} exists and is not a plain file (a symbolic link?); refusing to write through it`,
      {
        hint: "Remove it, and find out who put it there. Nothing was written.",
      },
    );
  }
  if (existing) await rm(partial);
}

/** A new, empty `.partial` file (mode 0600): never through a symbolic link, never over a file. */
export async function createPartial(partial: string): Promise<FileHandle> {
  await preparePartial(partial);
  return openNew(partial);
}

const openNew = (path: string) =>
  open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);

/**
 * The `.partial` file at `partial`, made new (O_EXCL, never through a link), or null when anything
 * is there already: another writer's (a backup of another database in the same folder, this very
 * second), a link, or a leftover (removeStalePartials takes those). Whoever made it owns the name.
 */
export async function reservePartial(partial: string): Promise<FileHandle | null> {
  return openNew(partial).catch((e: NodeJS.ErrnoException) => {
    if (e.code === "EEXIST") return null;
    throw e;
  });
}

/** Copy `from` to a new `.partial` file, with the same care as createPartial. */
export async function copyToPartial(from: string, partial: string): Promise<void> {
  await preparePartial(partial);
  await copyFile(from, partial, constants.COPYFILE_EXCL);
}

/** Make a rename durable: the directory entry must reach the disk too. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Write to `path.partial`, fsync, rename: readers see the old file or the whole new one. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const partial = `${path}.partial`;
  const handle = await takePartial(partial);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(partial, path);
  await fsyncDir(dirname(path));
}

/** A `.partial` this young belongs to a writer still at work (manifests and records are written in milliseconds). */
const PARTIAL_IN_USE_MS = 10_000;

/**
 * createPartial for a file two writers may write at once (a base backup's manifest: its check and
 * the off-site copier each record their part): a `.partial` another writer holds is waited for,
 * not removed. Removing it let that writer rename ours half-written, and its own rename fail.
 * One older than PARTIAL_IN_USE_MS was left by a crash and goes.
 */
export async function takePartial(partial: string): Promise<FileHandle> {
  for (;;) {
    const existing = await lstat(partial).catch(() => null);
    if (existing && !existing.isFile()) await preparePartial(partial); // refuses a link: UNSAFE_PATH
    if (existing) {
      if (Date.now() - existing.mtimeMs < PARTIAL_IN_USE_MS) {
        await Bun.sleep(10);
        continue;
      }
      await rm(partial, { force: true }); // a crash's leftover
    }
    try {
      return await open(
        partial,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
    } catch (e) {
      // Another writer made it between our look and our O_EXCL open: wait for it too.
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }
}

/**
 * Run `fn` while `path` (a `.partial` being written) is kept looking alive: its time is set to now
 * every `everyMs`. removeStalePartials takes a file untouched for minutes for a crash's leftover, and
 * a live writer may write nothing for longer (pg_dump waiting on a table's lock), while a backup of
 * another database sharing the folder (another maintenance lock) cleans up. Never follows a link.
 */
export async function keptAlive<T>(path: string, fn: () => Promise<T>, everyMs = 5_000): Promise<T> {
  const timer = setInterval(() => {
    const now = new Date();
    lutimes(path, now, now).catch(() => {});
  }, everyMs);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}

/** `.partial` files not written to for `olderThanMs` were left by a crash: they are never backups. */
export async function removeStalePartials(dir: string, olderThanMs: number): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith("shinkei_backup_") || !name.endsWith(".partial")) continue;
    const path = join(dir, name);
    const s = await stat(path).catch(() => null);
    if (s && Date.now() - s.mtimeMs > olderThanMs) {
      await rm(path, { force: true });
      removed.push(name);
    }
  }
  return removed;
}

/** The SHA-256 of a file's bytes (hex), read as a stream: base backups and WAL are too large to hold whole. */
export async function sha256File(path: string): Promise<string> {
  const h = new Bun.CryptoHasher("sha256");
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}
