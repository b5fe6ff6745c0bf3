import { mkdir, readdir, rename, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { backupNaming } from "./naming.ts";
import { copyToPartial, fsyncDir } from "./files.ts";
import { tooLargeObject, type BackupStore, type StoredObject, type StoreNaming } from "./store.ts";

/** A folder of backups: BACKUP_DIR itself, or any other folder used as a copy. */
export class LocalStore implements BackupStore {
  readonly kind = "local";
  readonly location: string;

  constructor(
    private readonly dir: string,
    readonly naming: StoreNaming = backupNaming,
  ) {
    this.location = resolve(dir);
  }

  private fail(what: string, e: NodeJS.ErrnoException): ShinkeiError {
    return new ShinkeiError("STORE_FAILED", `${what} at ${this.location} failed: ${e.code ?? e.message}`, { cause: e });
  }

  async list(): Promise<StoredObject[]> {
    // No folder yet holds no backups; a folder that cannot be read must not look like an empty one.
    const names = await readdir(this.dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return [] as string[];
      throw this.fail("listing", e);
    });
    const found: StoredObject[] = [];
    for (const name of names.filter((n) => this.naming.isOurs(n))) {
      const s = await stat(join(this.dir, name)).catch(() => null);
      if (s?.isFile()) found.push({ name, sizeBytes: s.size, modifiedAt: s.mtime });
    }
    return found;
  }

  async put(name: string, localPath: string) {
    const target = join(this.dir, name);
    try {
      // Like a bucket prefix, a folder that does not exist yet is an empty store, not a broken one.
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      await copyToPartial(localPath, `${target}.partial`);
      await rename(`${target}.partial`, target);
      await fsyncDir(this.dir);
      return { sizeBytes: (await stat(target)).size, verified: "size" as const };
    } catch (e) {
      throw e instanceof ShinkeiError ? e : this.fail(`copying ${name} in`, e as NodeJS.ErrnoException);
    }
  }

  async get(name: string, localPath: string, options: { maxBytes?: number } = {}) {
    const source = join(this.dir, name);
    const found = await stat(source).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return null;
      throw this.fail(`reading ${name}`, e);
    });
    if (!found?.isFile()) throw new ShinkeiError("BACKUP_NOT_FOUND", `no ${name} at ${this.location}`);
    if (options.maxBytes !== undefined && found.size > options.maxBytes)
      throw tooLargeObject(name, this.location, options.maxBytes);
    await copyToPartial(source, `${localPath}.partial`);
    await rename(`${localPath}.partial`, localPath);
  }

  async remove(name: string) {
    if (!this.naming.isOurs(name))
      throw new ShinkeiError("NOT_OURS", `refusing to delete ${name}: not a shinkei backup name`);
    try {
      for (const n of [name, ...this.naming.companions(name)]) await rm(join(this.dir, n), { force: true });
    } catch (e) {
      throw this.fail(`deleting ${name}`, e as NodeJS.ErrnoException);
    }
  }
}
