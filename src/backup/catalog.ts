import { readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { compareNewestFirst, parseBackupName, type BackupName } from "./naming.ts";
import { readManifest, type Manifest } from "./manifest.ts";

export type LocalBackup = BackupName & { path: string; sizeBytes: number; manifest: Manifest | null };

/** Our backups in `dir`, newest first. Anything not named like ours (and every `.partial`) is ignored. */
export async function listLocal(dir: string): Promise<LocalBackup[]> {
  const names = await readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === "ENOENT") return [] as string[];
    throw new ShinkeiError("BACKUP_FAILED", `cannot read ${dir}: ${e.message}`);
  });
  const found: LocalBackup[] = [];
  for (const name of names) {
    const parsed = parseBackupName(name);
    if (!parsed) continue;
    const path = join(dir, name);
    const info = await stat(path).catch(() => null);
    if (!info?.isFile()) continue;
    found.push({ ...parsed, path, sizeBytes: info.size, manifest: await readManifest(path) });
  }
  return found.sort(compareNewestFirst);
}

/**
 * A file the user named (a path, or a name inside `dir`), or else the newest backup that is not
 * a pre-restore safety copy: restoring twice in a row must not bring back what the first replaced.
 */
export async function resolveBackup(dir: string, file?: string): Promise<string> {
  if (file) {
    for (const candidate of [file, join(dir, basename(file))]) {
      if ((await stat(candidate).catch(() => null))?.isFile()) return candidate;
    }
    throw new ShinkeiError("BACKUP_NOT_FOUND", `no backup file ${file}`, { hint: `Looked at ${file} and in ${dir}; see shinkei backup --list.` });
  }
  const latest = (await listLocal(dir)).find((b) => b.manifest?.reason !== "pre-restore");
  if (!latest) throw new ShinkeiError("BACKUP_NOT_FOUND", `no backups in ${dir}`, { hint: "Take one with shinkei backup, or name a file with --backup-file." });
  return latest.path;
}
