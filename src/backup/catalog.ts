import { mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { MANIFEST_SUFFIX, compareNewestFirst, notFuture, parseBackupName, type BackupName } from "../storage/naming.ts";
import { hasValidSignature, manifestPath, readManifest, type Manifest } from "./manifest.ts";
import { RECORD_MAX_BYTES, TooLargeObject, type BackupStore, type StoredObject } from "../storage/store.ts";

const SAFETY_COPIES = new Set(["pre-restore", "pre-recover"]);
/** A copy of the state a restore or recovery replaced: never what a default restores (nor retention's newest). */
export const isSafetyCopy = (m: Manifest | null | undefined): boolean => SAFETY_COPIES.has(String(m?.reason));

/**
 * Whether a manifest may speak for the backup file `name`: with BACKUP_MANIFEST_KEY, only one signed
 * with it for that very name, as verification demands (a bucket's writer cannot sign, but can plant a
 * manifest, or copy an old signed one under a newer name); without the key, whatever is there.
 */
export const vouchesFor = (m: Manifest | null | undefined, name: string, manifestKey?: string): boolean =>
  !manifestKey || (m != null && typeof m === "object" && hasValidSignature(m, manifestKey) && m.file === name);

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

/** A database on its server: what a connection names (describeTarget) and a manifest records. */
export type Owner = { database: string; host: string; port: number };

/**
 * The server a manifest (or an Owner) names, as host:port text; null when it names none. Spellings
 * of one server are one: host names in any letter case, and the loopback spellings (localhost,
 * 127.0.0.1, ::1; other 127.x addresses may be other servers), so a DATABASE_URL written another
 * way does not make this database's backups another's (never restored by default, never pruned,
 * never counted fresh).
 */
export function serverOf(m: { host?: unknown; port?: unknown } | null | undefined): string | null {
  if (!m || m.host === undefined || m.host === null) return null;
  const written = String(m.host);
  // A socket directory is a path: its letter case is its own.
  const host = written.startsWith("/") ? written : written.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  const loopback = host === "localhost" || host === "127.0.0.1" || host === "::1";
  return `${loopback ? "localhost" : host}:${String(m.port)}`;
}

/** Whether a manifest names this database on this server (the same text retention groups by). */
export const belongsTo = (m: Manifest | null | undefined, owner: Owner): boolean =>
  m != null && m.database === owner.database && serverOf(m) === serverOf(owner);

/**
 * A file the user named (a path, or a name inside `dir`), or else the newest backup of ours that
 * is not a safety copy (pre-restore, pre-recover): restoring twice in a row must not bring back
 * what the first replaced. What a default picks is only ever ours: never a name dated in the
 * future, never an off-site object without its manifest. A backup found only off-site is
 * downloaded into `dir`. With `owner`, a default picks only a backup whose manifest names that
 * database on that server: one BACKUP_DIR (or bucket prefix) serving two databases, or staging and
 * production databases of one name, must not restore one into the other. With `manifestKey`
 * (BACKUP_MANIFEST_KEY), a default picks only a backup whose manifest is signed for its name
 * (vouchesFor): one planted newer, unsigned or copied under a newer name, would only fail
 * verification, and keep the real newest from being restored.
 */
export async function obtainBackup(
  dir: string,
  file?: string,
  offsite?: BackupStore,
  owner?: Owner,
  manifestKey?: string,
): Promise<string> {
  if (file) {
    for (const candidate of [file, join(dir, basename(file))]) {
      if ((await stat(candidate).catch(() => null))?.isFile()) return candidate;
    }
    const objects = offsite ? await offsite.list() : [];
    if (objects.some((o) => o.name === basename(file))) return download(offsite!, dir, basename(file), objects);
    throw new ShinkeiError("BACKUP_NOT_FOUND", `no backup file ${file}`, {
      hint: `Looked at ${file}, in ${dir}${offsite ? ` and at ${offsite.location}` : ""}; see shinkei backup --list.`,
    });
  }
  const local = await listLocal(dir);
  // What a default may pick: a backup (not a safety copy) of this database on this server, when one is named.
  const fits = (m: Manifest | null, name: string) =>
    m !== null && !SAFETY_COPIES.has(m.reason) && (!owner || belongsTo(m, owner)) && vouchesFor(m, name, manifestKey);
  // Why none fits, when none does: the newest backup of this database's name from another server
  // (staging's default finding production's, say), else the newest other database's.
  let elsewhere: (BackupName & { server: string | null }) | undefined;
  let other: (BackupName & { database: unknown }) | undefined;
  const seen = (b: BackupName, m: Manifest) => {
    if (owner && m.database === owner.database) {
      if (!elsewhere || compareNewestFirst(b, elsewhere) < 0) elsewhere = { ...b, server: serverOf(m) };
    } else if (!other || compareNewestFirst(b, other) < 0) other = { ...b, database: m.database };
  };
  // Backups passed over as unsigned (or signed for another name), for the error when none fits.
  let unsigned = 0;
  const vouched = (m: Manifest, name: string) => vouchesFor(m, name, manifestKey) || (unsigned++, false);
  const ours = local.filter(
    (b) => b.manifest !== null && !SAFETY_COPIES.has(b.manifest.reason) && notFuture(b) && vouched(b.manifest, b.name),
  );
  const latest = ours.find((b) => fits(b.manifest, b.name));
  if (!latest) for (const b of ours) seen(b, b.manifest!);
  // A newer copy that exists only off-site (this machine lost its disk, say) wins over an older local
  // one. Each is judged by its manifest alone, fetched first: only a backup that fits is downloaded,
  // and never over a file of the same name here (that one was judged above).
  if (offsite) {
    const objects = await offsite.list();
    const here = new Set(local.map((b) => b.name));
    for (const remote of newestRemotes(objects)) {
      if (latest && compareNewestFirst(remote, latest) >= 0) break;
      if (here.has(remote.name)) continue;
      const manifest = await peekManifest(offsite, remote.name);
      if (fits(manifest, remote.name)) return download(offsite, dir, remote.name, objects);
      if (manifest && !SAFETY_COPIES.has(manifest.reason) && vouched(manifest, remote.name)) seen(remote, manifest);
    }
  }
  if (!latest) {
    // Names from a manifest, quoted: whatever it holds prints as one line of plain text.
    const quoted = (v: unknown) => JSON.stringify(typeof v === "string" ? v : String(v));
    const where =
      `in ${dir}${offsite ? ` or at ${offsite.location}` : ""}` +
      (unsigned
        ? ` (${unsigned} passed over: their manifests are not signed with BACKUP_MANIFEST_KEY for their names)`
        : "");
    if (owner && elsewhere) {
      const server = elsewhere.server === null ? "a server its manifest does not name" : quoted(elsewhere.server);
      throw new ShinkeiError(
        "BACKUP_NOT_FOUND",
        `no backups of ${quoted(owner.database)} on ${quoted(serverOf(owner))} ${where}; the newest of that ` +
          `name is ${elsewhere.name}, taken on ${server}: pass the file explicitly if that backup is what you mean`,
        {
          hint:
            "A default never picks another server's backup, and nothing was changed: " +
            `name ${elsewhere.name} as the file (--backup-file) to use it.`,
        },
      );
    }
    throw new ShinkeiError(
      "BACKUP_NOT_FOUND",
      other === undefined || owner === undefined
        ? `no backups ${where}`
        : `no backups of ${quoted(owner.database)} ${where} (the newest is of ${quoted(other.database)})`,
      {
        hint:
          other === undefined
            ? "Take one with shinkei backup, or name a file with --backup-file."
            : "Name the file to use with --backup-file if another database's backup is what you mean.",
      },
    );
  }
  return latest.path;
}

/** A stored backup's manifest alone, read through a folder of our own; null when it is not one, or is gone. */
export async function peekManifest(store: BackupStore, name: string): Promise<Manifest | null> {
  const folder = await mkdtemp(join(tmpdir(), "shinkei-manifest-"));
  try {
    const path = join(folder, name);
    // One too large to be a manifest is not one (as one that does not parse): it is never read whole.
    const fetched = await store.get(name + MANIFEST_SUFFIX, manifestPath(path), { maxBytes: RECORD_MAX_BYTES }).then(
      () => true,
      (e) => {
        if (e instanceof TooLargeObject) return false;
        // Gone since the listing (another service's retention, say): no manifest, as for one never listed.
        if (e instanceof ShinkeiError && e.code === "BACKUP_NOT_FOUND") return false;
        throw e;
      },
    );
    const m = fetched ? await readManifest(path) : null;
    return m !== null && typeof m === "object" && !Array.isArray(m) ? m : null;
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
}

/** Our backups in the store that have a manifest there, newest first. */
function newestRemotes(objects: StoredObject[]): BackupName[] {
  const names = new Set(objects.map((o) => o.name));
  return objects
    .map((o) => parseBackupName(o.name))
    .filter((n): n is BackupName => n !== null && names.has(n.name + MANIFEST_SUFFIX) && notFuture(n))
    .sort(compareNewestFirst);
}

/**
 * Fetch a backup and, when the store lists one, its manifest into `dir`; verification then checks
 * it like any local file. A manifest that is listed but cannot be fetched is an error: skipping it
 * would quietly skip the checks it carries.
 */
async function download(store: BackupStore, dir: string, name: string, objects: StoredObject[]): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, name);
  await store.get(name, path);
  if (objects.some((o) => o.name === name + MANIFEST_SUFFIX))
    await store.get(name + MANIFEST_SUFFIX, manifestPath(path), { maxBytes: RECORD_MAX_BYTES });
  return path;
}
