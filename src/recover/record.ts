import { lstat, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { tmpdir, userInfo } from "node:os";
import { writeFileAtomic } from "../storage/files.ts";
import { signParts, signatureMatches } from "../backup/manifest.ts";
import { decrypt, encrypt, encryptionFor, type AgeConfig, type Encryption } from "../storage/crypt.ts";
import { ShinkeiError } from "../errors.ts";
import { RECORD_MAX_BYTES, TooLargeObject, type BackupStore, type StoreNaming } from "../storage/store.ts";
import type { Applied } from "./apply.ts";
import type { Row } from "./diff.ts";
import type { Plan, Scope } from "./plan.ts";

const SUFFIX = ".recovered.json";
const UNDO_SUFFIX = ".undo.json";
/** `shinkei_recovery_<applied at, UTC>_<first 8 of the id>` and one of a record's or safety copy's endings. */
const RECOVERY_NAME = new RegExp(
  String.raw`^(shinkei_recovery_(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})_([0-9a-f]{8}))` +
    String.raw`\.(recovered\.json|undo\.json(?:\.age)?)$`,
);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export type RecoveryName = { name: string; base: string; appliedAt: Date; idPrefix: string; isRecord: boolean };

/** A record's or safety copy's name, parsed; null for any other name (and for a stamp no clock shows). */
export function parseRecoveryName(name: string): RecoveryName | null {
  const m = RECOVERY_NAME.exec(name);
  if (!m) return null;
  const [, base, y, mo, d, h, mi, sec, idPrefix, ending] = m;
  const appliedAt = new Date(Date.UTC(+y!, +mo! - 1, +d!, +h!, +mi!, +sec!));
  // Date.UTC rolls 30 February or minute 60 over into a real moment: no stamp we write.
  if (stamp(appliedAt) !== `${y}${mo}${d}_${h}${mi}${sec}`) return null;
  return { name, base: base!, appliedAt, idPrefix: idPrefix!, isRecord: ending === "recovered.json" };
}

/**
 * The naming of recovery records wherever they are kept (BACKUP_DIR, the off-site folder): only
 * these names are listed or removed, and a record goes with its safety copy (record first, so a
 * removal cut short leaves an orphaned safety copy, never a record whose undo is gone).
 */
export const recoveryNaming: StoreNaming = {
  isOurs: (name) => parseRecoveryName(name) !== null,
  companions(name) {
    const p = parseRecoveryName(name);
    if (!p) return [];
    return [p.base + SUFFIX, p.base + UNDO_SUFFIX, `${p.base}${UNDO_SUFFIX}.age`].filter((n) => n !== name);
  },
};

/**
 * The safety copy of one recovery: exactly the rows it changed. For a row it inserted, its key and
 * a digest of the row as inserted (to tell whether it changed since); for a row it updated, the
 * whole row as it was and the digest of what it wrote; for a row it deleted, the whole row.
 */
export type UndoTable = {
  table: string;
  primaryKey: string[];
  /** The columns the digests are of (the table's when the recovery ran); absent in older records: the whole row. */
  columns?: string[];
  /**
   * Columns of `updated` rows the recovery kept as they were (how the user signs in): neither in
   * their digests nor put back. Absent in older records and when there are none.
   */
  kept?: string[];
  /**
   * `xmin`: the transaction that wrote the row's version the recovery left (absent in older
   * records). Another write since, even of the same values (a later recovery bringing the row
   * back again), makes a new version: while a later recovery is applied, the row is then no
   * longer this one's to undo.
   */
  inserted: { key: Row; digest: string; xmin?: string }[];
  updated: { before: Row; digest: string; xmin?: string }[];
  deleted: Row[];
};
/** A transaction id as the server prints a row's xmin, or none (older records). */
const xminOk = (x: unknown) => x === undefined || (typeof x === "string" && /^[0-9]{1,10}$/.test(x));

export type UndoData = { undoVersion: 1; id: string; database: string; root: string; tables: UndoTable[] };

/** What a recovery applied, and where its undo lies: kept in BACKUP_DIR, written before the commit. */
export type RecoveredRecord = {
  recovered: true;
  /** Records written before row-level undo have none: they name a full safety backup instead. */
  id?: string;
  at: string;
  by: string;
  database: string;
  /**
   * The server the database is on, as its connection names it (a manifest's host and port): with
   * `database`, whose record this is, for retention in a folder several services share. Absent in
   * older records.
   */
  host?: string;
  port?: number;
  source: string;
  scope: Scope;
  owner?: string;
  mode: "default" | "into-current-account" | "restore-account";
  revertChanged: boolean;
  /** A full pre-recover backup: only with --full-safety-backup (and in older records). */
  safetyBackup?: string;
  /** The safety copy beside this record: its name, and the SHA-256 of its bytes (encrypted ones, when it is). */
  undo?: { file: string; sha256: string; sizeBytes: number; encryption?: Encryption };
  removedAccount?: string;
  tables: Applied["tables"];
  /** HMAC with BACKUP_MANIFEST_KEY of everything above (see signedPart). */
  signature?: string;
  /** Off-site copies of the record and its safety copy, by store kind: added after signing, not signed. */
  offsite?: Record<string, { location: string; copiedAt: string }>;
};

/** Who ran it: the login behind sudo when there is one, else the account the process runs as. */
function operator(env: Record<string, string | undefined>): string {
  const named = env.SUDO_USER || env.USER || env.LOGNAME;
  if (named) return named;
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? "?"}`; // no passwd entry (some containers): the uid still says who
  }
}

export function recordFor(options: {
  id: string;
  plan: Plan;
  applied: Applied;
  source: string;
  database: string;
  host: string;
  port: number;
  safetyBackup?: string;
  revertChanged: boolean;
  env: Record<string, string | undefined>;
}): RecoveredRecord {
  return {
    recovered: true,
    id: options.id,
    at: new Date().toISOString(),
    by: operator(options.env),
    database: options.database,
    host: options.host,
    port: options.port,
    source: options.source,
    scope: options.plan.scope,
    owner: options.plan.owner,
    mode: options.plan.mode ?? "default",
    revertChanged: options.revertChanged,
    safetyBackup: options.safetyBackup ? basename(options.safetyBackup) : undefined,
    removedAccount: options.applied.removedAccount,
    tables: options.applied.tables,
  };
}

/** Everything but the signature and the off-site copies (recorded later, as a manifest's are). */
const signedPart = (r: RecoveredRecord): unknown[] => [{ ...r, signature: undefined, offsite: undefined }];

function stamp(at: Date): string {
  return at.toISOString().replace(/[-:]/g, "").replace("T", "_").slice(0, 15);
}

/**
 * Write the safety copy (encrypted when backups are) and the record beside it, each fsynced and
 * renamed into place, the record signed when BACKUP_MANIFEST_KEY is set. Called inside the
 * recovery's transaction, before its commit: a recovery that committed always has its undo on disk.
 * Returns the record's path and the safety copy's SHA-256 (which the transaction stores too).
 */
export async function writeRecovery(
  dir: string,
  record: RecoveredRecord,
  undo: UndoData,
  age?: AgeConfig,
): Promise<{ path: string; undoPath: string; sha256: string; record: RecoveredRecord }> {
  await mkdir(dir, { recursive: true });
  const base = join(dir, `shinkei_recovery_${stamp(new Date(record.at))}_${record.id!.slice(0, 8)}`);
  const encryption = encryptionFor(age);
  const text = JSON.stringify(undo);
  const bytes = encryption
    ? new Uint8Array(await new Response(await encrypt(new Blob([text]).stream(), age!)).arrayBuffer())
    : new TextEncoder().encode(text);
  const undoPath = base + UNDO_SUFFIX + (encryption ? ".age" : "");
  await writeFileAtomic(undoPath, bytes);
  const sha256 = new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
  const signed: RecoveredRecord = {
    ...record,
    undo: { file: basename(undoPath), sha256, sizeBytes: bytes.length, encryption },
  };
  if (age?.manifestKey) signed.signature = signParts(signedPart(signed), age.manifestKey);
  const path = base + SUFFIX;
  await writeFileAtomic(path, JSON.stringify(signed, null, 2) + "\n");
  return { path, undoPath, sha256, record: signed };
}

export type HistoryEntry = RecoveredRecord & { path: string };

/** Every recovery recorded in `dir`, oldest first; unreadable files are skipped, not fatal. */
export async function history(dir: string): Promise<HistoryEntry[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: HistoryEntry[] = [];
  for (const name of names.filter((n) => n.endsWith(SUFFIX))) {
    const r = (await Bun.file(join(dir, name))
      .json()
      .catch(() => null)) as RecoveredRecord | null;
    if (r?.recovered === true && typeof r.at === "string" && r.tables && typeof r.tables === "object")
      out.push({ ...r, path: join(dir, name) });
  }
  return out.sort((a, b) => a.at.localeCompare(b.at));
}

const refused = (
  message: string,
  hint = "Nothing was changed. Undo only with the record a recovery of this database wrote, as it wrote it.",
) => new ShinkeiError("RECORD_REFUSED", message, { hint });

/** Where a record was found: the file to read, and what to call it (a path, or its off-site location). */
type Found = { path: string; shown: string; cleanup?: () => Promise<void> };

const beside = (shown: string, name: string) =>
  shown.includes("/") ? shown.slice(0, shown.lastIndexOf("/") + 1) + name : name;

/**
 * A record named by its path, or by its id (or the first 8 or more characters of it) as --history
 * lists it; looked for in `dir` first, then (when given) in the off-site store, by the same name or
 * id: a record whose local copy is gone (a lost disk) still undoes from its off-site one.
 */
async function findRecord(ref: string, dir: string, offsite?: BackupStore): Promise<Found> {
  if (await Bun.file(ref).exists()) return { path: ref, shown: ref };
  const byId = /^[0-9a-f-]{8,36}$/i.test(ref);
  if (byId) {
    const matches = (await history(dir)).filter((r) => typeof r.id === "string" && r.id.startsWith(ref.toLowerCase()));
    if (matches.length === 1) return { path: matches[0]!.path, shown: matches[0]!.path };
    if (matches.length > 1)
      throw new ShinkeiError(
        "USAGE",
        `${ref} matches ${matches.length} recoveries: give more of the id, or the record's path`,
      );
  }
  const fetched = offsite ? await fetchRecord(ref, byId, offsite) : null;
  if (fetched) return fetched;
  throw new ShinkeiError(
    "NOT_FOUND",
    `no recovery record ${ref} (neither a file nor an id in ${dir}${offsite ? ` or at ${offsite.location}` : ""})`,
    { hint: "shinkei recover --history lists the recoveries and their ids." },
  );
}

/**
 * The off-site copy of a record (by its file name, or by id) and of the safety copy it names,
 * fetched into a private temporary folder: read once, checked exactly as a local record is, never
 * written back into BACKUP_DIR. Null when the store holds no such record.
 */
async function fetchRecord(ref: string, byId: boolean, store: BackupStore): Promise<Found | null> {
  const named = parseRecoveryName(basename(ref));
  const wanted = ref.toLowerCase();
  const candidates = (await store.list())
    .map((o) => parseRecoveryName(o.name))
    .filter(
      (p): p is RecoveryName =>
        p !== null && p.isRecord && (named ? p.name === named.name : byId && wanted.startsWith(p.idPrefix)),
    );
  if (!candidates.length) return null;
  const folder = await mkdtemp(join(tmpdir(), "shinkei-undo-"));
  const cleanup = () => rm(folder, { recursive: true, force: true });
  try {
    const found: { p: RecoveryName; record: RecoveredRecord | null }[] = [];
    for (const p of candidates) {
      // One too large to be a record is not one (as one that does not parse): never read whole.
      const fetched = await store.get(p.name, join(folder, p.name), { maxBytes: RECORD_MAX_BYTES }).then(
        () => true,
        (e) => {
          if (e instanceof TooLargeObject) return false;
          throw e;
        },
      );
      const record = fetched
        ? ((await Bun.file(join(folder, p.name))
            .json()
            .catch(() => null)) as RecoveredRecord | null)
        : null;
      // By id, the name carries only its first 8 characters: the record itself says the rest.
      if (named || (typeof record?.id === "string" && record.id.startsWith(wanted))) found.push({ p, record });
    }
    if (found.length > 1)
      throw new ShinkeiError(
        "USAGE",
        `${ref} matches ${found.length} recoveries at ${store.location}: give more of the id, or the record's name`,
      );
    const hit = found[0];
    if (!hit) return (await cleanup(), null);
    // Only the safety copy of this very record: a record naming another object gets none (and is refused as missing).
    const file = hit.record?.undo?.file;
    if (typeof file === "string" && parseRecoveryName(file)?.base === hit.p.base && !parseRecoveryName(file)!.isRecord)
      await store.get(file, join(folder, file)).catch((e) => {
        if (!(e instanceof ShinkeiError && e.code === "BACKUP_NOT_FOUND")) throw e;
      });
    const location = store.location.endsWith("/") ? store.location : `${store.location}/`;
    return { path: join(folder, hit.p.name), shown: location + hit.p.name, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

function checkUndoShape(u: unknown, id: string): UndoData {
  const d = u as UndoData;
  const rows = (x: unknown) =>
    Array.isArray(x) && x.every((r) => r !== null && typeof r === "object" && !Array.isArray(r));
  const ok =
    d?.undoVersion === 1 &&
    d.id === id &&
    typeof d.root === "string" &&
    Array.isArray(d.tables) &&
    d.tables.every(
      (t) =>
        typeof t?.table === "string" &&
        Array.isArray(t.primaryKey) &&
        t.primaryKey.length > 0 &&
        t.primaryKey.every((c) => typeof c === "string") &&
        (t.columns === undefined || (Array.isArray(t.columns) && t.columns.every((c) => typeof c === "string"))) &&
        (t.kept === undefined || (Array.isArray(t.kept) && t.kept.every((c) => typeof c === "string"))) &&
        Array.isArray(t.inserted) &&
        t.inserted.every((i) => rows([i?.key]) && typeof i.digest === "string" && xminOk(i.xmin)) &&
        Array.isArray(t.updated) &&
        t.updated.every((i) => rows([i?.before]) && typeof i.digest === "string" && xminOk(i.xmin)) &&
        rows(t.deleted),
    );
  if (!ok) throw refused(`the safety copy of recovery ${id} is not one shinkei wrote for it`);
  return d;
}

/**
 * Read a record and its safety copy, trusting neither: the record must be signed with this host's
 * BACKUP_MANIFEST_KEY (when set), the safety copy's bytes must match the record's SHA-256, and the
 * database checks the same digest and that the recovery committed there (see undo.ts).
 */
export async function loadRecovery(
  ref: string,
  dir: string,
  age?: AgeConfig,
  offsite?: BackupStore,
): Promise<{ path: string; record: RecoveredRecord; undo: UndoData }> {
  const found = await findRecord(ref, dir, offsite);
  try {
    return await readRecovery(found, age);
  } finally {
    await found.cleanup?.();
  }
}

async function readRecovery(
  found: Found,
  age?: AgeConfig,
): Promise<{ path: string; record: RecoveredRecord; undo: UndoData }> {
  const path = found.shown;
  const record = (await Bun.file(found.path)
    .json()
    .catch(() => null)) as RecoveredRecord | null;
  if (record?.recovered !== true || typeof record.at !== "string" || !record.tables || typeof record.scope !== "object")
    throw refused(`${path} is not a recovery record`);
  if (!record.undo || typeof record.id !== "string") {
    throw refused(
      `${path} was written before recoveries kept their rows: it has no row-level undo`,
      record.safetyBackup
        ? `Its full safety backup is ${record.safetyBackup} (shinkei backup --restore --backup-file it: ` +
            `that rolls back every write since, of every user).`
        : undefined,
    );
  }
  if (
    !UUID.test(record.id) ||
    typeof record.undo.file !== "string" ||
    basename(record.undo.file) !== record.undo.file ||
    !/^[0-9a-f]{64}$/.test(record.undo.sha256 ?? "")
  ) {
    throw refused(`${path} is not a recovery record shinkei wrote`);
  }
  if (age?.manifestKey && !signatureMatches(record.signature, signedPart(record), age.manifestKey)) {
    throw refused(
      `${path} is ` +
        (record.signature
          ? "not signed with this host's BACKUP_MANIFEST_KEY (changed since it was written, or from another host)"
          : "unsigned, and BACKUP_MANIFEST_KEY is set"),
    );
  }
  const undoFile = join(dirname(found.path), record.undo.file);
  const undoPath = found.path === found.shown ? undoFile : beside(path, record.undo.file);
  const stat = await lstat(undoFile).catch(() => null);
  if (!stat?.isFile())
    throw refused(`the safety copy ${undoPath} of recovery ${record.id} is ${stat ? "not a plain file" : "missing"}`);
  const bytes = new Uint8Array(await Bun.file(undoFile).arrayBuffer());
  if (new Bun.CryptoHasher("sha256").update(bytes).digest("hex") !== record.undo.sha256) {
    throw refused(`the safety copy ${undoPath} does not match its record's SHA-256: it changed since it was written`);
  }
  let text: string;
  if (record.undo.encryption) {
    text = await new Response(
      await decrypt(new Blob([bytes]).stream(), age, basename(undoPath), record.undo.encryption),
    ).text();
  } else text = new TextDecoder().decode(bytes);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw refused(`the safety copy ${undoPath} is not JSON`);
  }
  return { path, record, undo: checkUndoShape(parsed, record.id) };
}
