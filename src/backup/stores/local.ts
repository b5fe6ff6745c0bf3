import { readdir, rename, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ShinkeiError } from "../../errors.ts";
import { MANIFEST_SUFFIX, isOurObject } from "../naming.ts";
import { copyToPartial, fsyncDir } from "../files.ts";
import type { BackupStore, StoredObject } from "./store.ts";

/** A folder of backups: BACKUP_DIR itself, or any other folder used as a copy. */
export class LocalStore implements BackupStore {
  readonly kind = "local";
  readonly location: string;

  constructor(private readonly dir: string) {
    this.location = resolve(dir);
  }

  async list(): Promise<StoredObject[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const found: StoredObject[] = [];
    for (const name of names.filter(isOurObject)) {
      const s = await stat(join(this.dir, name)).catch(() => null);
      if (s?.isFile()) found.push({ name, sizeBytes: s.size, modifiedAt: s.mtime });
    }
    return found;
  }

  async put(name: string, localPath: string) {
    const target = join(this.dir, name);
    await copyToPartial(localPath, `${target}.partial`);
    await rename(`${target}.partial`, target);
    await fsyncDir(this.dir);
    return { sizeBytes: (await stat(target)).size, verified: "size" as const };
  }

  async get(name: string, localPath: string) {
    await copyToPartial(join(this.dir, name), `${localPath}.partial`);
    await rename(`${localPath}.partial`, localPath);
  }

  async remove(name: string) {
    if (!isOurObject(name)) throw new ShinkeiError("NOT_OURS", `refusing to delete ${name}: not a shinkei backup name`);
    await rm(join(this.dir, name), { force: true });
    await rm(join(this.dir, name + MANIFEST_SUFFIX), { force: true });
  }
}
