import { mkdir, readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { MANIFEST_SUFFIX, compareNewestFirst, parseBackupName, type BackupName } from "./naming.ts";
import { manifestPath, readManifest, type Manifest } from "./manifest.ts";
import type { BackupStore, StoredObject } from "./stores/store.ts";

const SAFETY_COPIES = new Set(["pre-restore", "pre-recover"]);

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
 * a pre-restore or pre-recover safety copy: restoring twice in a row must not bring back what the
 * first replaced, and a copy taken just before a recovery holds nothing the recovery did not see.
 * With an off-site store, a backup found only there is downloaded into `dir` first.
 */
export async function resolveBackup(dir: string, file?: string, offsite?: BackupStore): Promise<string> {
  if (file) {
    for (const candidate of [file, join(dir, basename(file))]) {
      if ((await stat(candidate).catch(() => null))?.isFile()) return candidate;
    }
    if (offsite && (await offsite.list()).some((o) => o.name === basename(file))) return download(offsite, dir, basename(file));
    throw new ShinkeiError("BACKUP_NOT_FOUND", `no backup file ${file}`, {
      hint: `Looked at ${file}, in ${dir}${offsite ? ` and at ${offsite.location}` : ""}; see shinkei backup --list.`,
    });
  }
  const latest = (await listLocal(dir)).find((b) => !SAFETY_COPIES.has(b.manifest?.reason ?? ""));
  // A newer copy that exists only off-site (this machine lost its disk, say) wins over an older local one.
  const remote = offsite ? newestRemote(await offsite.list()) : undefined;
  if (remote && (!latest || compareNewestFirst(remote, latest) < 0)) return download(offsite!, dir, remote.name);
  if (!latest) throw new ShinkeiError("BACKUP_NOT_FOUND", `no backups in ${dir}`, { hint: "Take one with shinkei backup, or name a file with --backup-file." });
  return latest.path;
}

function newestRemote(objects: StoredObject[]): BackupName | undefined {
  return objects.map((o) => parseBackupName(o.name)).filter((n): n is BackupName => n !== null).sort(compareNewestFirst)[0];
}

/** Fetch a backup and its manifest into `dir`; verification then checks it like any local file. */
async function download(store: BackupStore, dir: string, name: string): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, name);
  await store.get(name, path);
  await store.get(name + MANIFEST_SUFFIX, manifestPath(path)).catch(() => {});
  return path;
}
