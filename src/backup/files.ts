import { open, rename, rm, stat, readdir } from "node:fs/promises";
import { dirname, join } from "node:path";

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
export async function writeFileAtomic(path: string, data: string): Promise<void> {
  const partial = `${path}.partial`;
  const handle = await open(partial, "w", 0o600);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(partial, path);
  await fsyncDir(dirname(path));
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
