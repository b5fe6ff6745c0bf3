import { mkdir, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Queryable } from "../pg/db.ts";
import { describeTarget } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { encryptionFor, type AgeConfig, type Encryption } from "../storage/crypt.ts";
import { fsyncDir, writeFileAtomic } from "../storage/files.ts";
import { finished, toolEnv } from "../pg/tools.ts";
import { sealTo } from "../storage/seal.ts";
import { findTool } from "../pg/bin.ts";
import { serverInfo } from "../pg/server-info.ts";
import { tarMemberTap } from "./tar.ts";
import { parseLsn, parseSegment, segmentName, segnoOf } from "./segments.ts";
import { signParts } from "../backup/manifest.ts";
import { trustProblem, type ArchiveTrust, type Untrusted } from "./trust.ts";

/**
 * Base backups: `BACKUP_DIR/base/shinkei_base_YYYYMMDD_HHMMSS.tar.zst[.age]` (`.tar.gz` from before
 * zstd, still read), beside it the server's own backup_manifest (sealed the same way) and our
 * manifest with the WAL range the backup needs. No WAL inside: the continuous archive holds it.
 */
export type BaseManifest = {
  baseManifestVersion: 1;
  file: string;
  backupManifestFile: string;
  startedAt: string;
  finishedAt: string;
  timeline: number;
  startLsn: string;
  stopLsn: string;
  /** The first and last WAL segment a restore of this backup needs. */
  startSegment: string;
  stopSegment: string;
  segmentBytes: number;
  host: string;
  port: number;
  serverVersion: string;
  pgBasebackupVersion: string;
  format: "tar+gzip" | "tar+gzip+age";
  encryption?: Encryption;
  sizeBytes: number;
  sha256: string;
  originalBytes: number;
  backupManifestSha256: string;
  reason: "manual" | "scheduled";
  durationMs: number;
  offsite?: Record<string, { location: string; sizeBytes: number; copiedAt: string }>;
  /** The last check of the whole backup (verify-base.ts). */
  verified?: { ok: boolean; at: string; problems: string[]; pgVerifybackup: string | null; skipped?: string };
  /** HMAC of what identifies the backup (baseManifestParts), with BACKUP_MANIFEST_KEY when set. */
  signature?: string;
};

/** What a base manifest's signature covers: the files, their checksums, the WAL range and times a restore relies on. */
const baseManifestParts = (m: BaseManifest): unknown[] => [
  "base",
  m.file,
  m.backupManifestFile,
  m.timeline,
  m.startLsn,
  m.stopLsn,
  m.startSegment,
  m.stopSegment,
  m.segmentBytes,
  m.format,
  m.encryption ?? null,
  m.sizeBytes,
  m.sha256,
  m.originalBytes,
  m.backupManifestSha256,
  m.startedAt,
  m.finishedAt,
  m.serverVersion,
];

export const signBaseManifest = (m: BaseManifest, key: string | undefined): BaseManifest =>
  key ? { ...m, signature: signParts(baseManifestParts(m), key) } : m;

/** Why this host may not use the base backup (unsigned, mis-signed, plain where it encrypts), or null. */
export const baseManifestProblem = (m: BaseManifest, trust: ArchiveTrust): string | null =>
  trustProblem(
    `base backup ${m.file}`,
    { signature: m.signature, encrypted: Boolean(m.encryption) },
    baseManifestParts(m),
    trust,
  );

export const baseDir = (backupDir: string) => join(backupDir, "base");
const NAME = /^shinkei_base_(\d{8})_(\d{6})(?:_(\d{1,3}))?\.tar\.(?:gz|zst)(\.age)?$/;
export const isBaseName = (name: string) => NAME.test(name);
export const BASE_MANIFEST_SUFFIX = ".manifest.json";

function stamp(at: Date): string {
  return at.toISOString().replace(/[-:]/g, "").replace("T", "_").slice(0, 15);
}

type WalRange = { Timeline: number; "Start-LSN": string; "End-LSN": string };

/** The WAL range pg_basebackup wrote into its backup_manifest (the last entry is the backup's own timeline). */
function walRange(manifest: Buffer): WalRange {
  let parsed: { "WAL-Ranges"?: WalRange[] };
  try {
    parsed = JSON.parse(manifest.toString("utf8"));
  } catch {
    throw new ShinkeiError("BACKUP_FAILED", "pg_basebackup's backup_manifest is not readable JSON");
  }
  const ranges = parsed["WAL-Ranges"];
  const r = Array.isArray(ranges) ? ranges.at(-1) : undefined;
  if (!r || !Number.isInteger(r.Timeline))
    throw new ShinkeiError("BACKUP_FAILED", "pg_basebackup's backup_manifest names no WAL range");
  parseLsn(r["Start-LSN"]);
  parseLsn(r["End-LSN"]);
  return r;
}

/**
 * pg_basebackup (tar to stdout, no WAL) -> our gzip, age and SHA-256 -> `.partial` -> fsync ->
 * rename; then its backup_manifest and our manifest. `fast` asks for an immediate checkpoint
 * (a person waiting); the schedule lets the server spread it.
 */
export async function createBaseBackup(options: {
  sql: Queryable;
  url: string;
  backupDir: string;
  reason: "manual" | "scheduled";
  fast?: boolean;
  age?: AgeConfig;
}): Promise<{ path: string; manifest: BaseManifest }> {
  const { sql, url } = options;
  const started = new Date();
  const info = await serverInfo(sql);
  const [extra] = await sql<
    { n: number }[]
  >`select count(*)::int as n from pg_tablespace where spcname not in ('pg_default', 'pg_global')`;
  if (extra!.n > 0) {
    throw new ShinkeiError(
      "UNSUPPORTED_LAYOUT",
      `the server has ${extra!.n} extra tablespace(s); pg_basebackup can stream only a single-tablespace ` +
        `cluster to stdout`,
      {
        hint: "Keep the app's data in the default tablespace, or back up with pg_basebackup -D <folder> yourself.",
      },
    );
  }
  const [server] = await sql<{ text: string }[]>`select current_setting('server_version') as text`;
  const tool = await findTool("pg_basebackup", info.major);
  const dir = baseDir(options.backupDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });

  const encryption = encryptionFor(options.age);
  const existing = new Set(await readdir(dir));
  let name = "";
  for (let seq = 0; seq < 1000 && (!name || existing.has(name) || existing.has(`${name}.partial`)); seq++) {
    name = `shinkei_base_${stamp(started)}${seq ? `_${seq}` : ""}.tar.zst${encryption ? ".age" : ""}`;
  }
  const path = join(dir, name);
  const partial = `${path}.partial`;
  const env: Record<string, string | undefined> = { ...toolEnv(url), PGAPPNAME: "shinkei_base_backup" };
  delete env.PGDATABASE;
  const proc = Bun.spawn(
    [
      tool.path,
      "-D",
      "-",
      "-Ft",
      "-X",
      "none",
      "--no-password",
      `--checkpoint=${options.fast ? "fast" : "spread"}`,
      `--label=shinkei ${name}`,
    ],
    { env, stdin: "ignore", stdout: "pipe", stderr: "pipe" },
  );
  const exit = finished(proc);
  const tap = tarMemberTap("backup_manifest");
  const sealOptions = { codec: "zstd" as const, age: encryption ? options.age : undefined };
  let manifestFile = "";
  try {
    const source = Readable.fromWeb(proc.stdout as import("node:stream/web").ReadableStream);
    const sealing = sealTo(tap.transform, partial, sealOptions);
    await Promise.all([
      pipeline(source, tap.transform).catch((e) => (tap.transform.destroy(e), Promise.reject(e))),
      sealing,
    ]);
    const sealed = await sealing;
    const { code, stderr } = await exit;
    if (code !== 0)
      throw new ShinkeiError("BACKUP_FAILED", `pg_basebackup failed (exit ${code}): ${stderr || "no message"}`);
    const backupManifest = tap.captured();
    if (!backupManifest)
      throw new ShinkeiError(
        "BACKUP_FAILED",
        "pg_basebackup's output held no backup_manifest (is it older than PostgreSQL 13?)",
      );
    const range = walRange(backupManifest);

    manifestFile = `${name.replace(/\.tar\.zst(\.age)?$/, "")}.backup_manifest.zst${encryption ? ".age" : ""}`;
    const mPartial = join(dir, `${manifestFile}.partial`);
    const mSealed = await sealTo(Readable.from([backupManifest]), mPartial, sealOptions);
    await rename(mPartial, join(dir, manifestFile));
    await rename(partial, path);
    await fsyncDir(dir);

    const t = describeTarget(url);
    const start = parseLsn(range["Start-LSN"]);
    const stop = parseLsn(range["End-LSN"]);
    const manifest: BaseManifest = signBaseManifest(
      {
        baseManifestVersion: 1,
        file: name,
        backupManifestFile: manifestFile,
        startedAt: started.toISOString(),
        finishedAt: new Date().toISOString(),
        timeline: range.Timeline,
        startLsn: range["Start-LSN"],
        stopLsn: range["End-LSN"],
        startSegment: segmentName(range.Timeline, segnoOf(start, info.segmentBytes), info.segmentBytes),
        // The stop position is the end of the last record: the segment holding its last byte.
        stopSegment: segmentName(
          range.Timeline,
          segnoOf(stop > start ? stop - 1n : stop, info.segmentBytes),
          info.segmentBytes,
        ),
        segmentBytes: info.segmentBytes,
        host: t.host,
        port: t.port,
        serverVersion: server!.text,
        pgBasebackupVersion: tool.version,
        format: encryption ? "tar+gzip+age" : "tar+gzip",
        encryption,
        sizeBytes: sealed.sizeBytes,
        sha256: sealed.sha256,
        originalBytes: sealed.bytesIn,
        backupManifestSha256: mSealed.sha256,
        reason: options.reason,
        durationMs: Date.now() - started.getTime(),
      },
      options.age?.manifestKey,
    );
    await writeBaseManifest(path, manifest);
    return { path, manifest };
  } catch (error) {
    proc.kill("SIGKILL");
    await rm(partial, { force: true });
    if (manifestFile) await rm(join(dir, `${manifestFile}.partial`), { force: true });
    if (error instanceof ShinkeiError) throw error;
    const e = error as NodeJS.ErrnoException;
    throw new ShinkeiError(
      "BACKUP_FAILED",
      `writing the base backup failed: ${e.code === "ENOSPC" ? "the disk is full" : e.message}`,
      { cause: error },
    );
  }
}

export async function writeBaseManifest(path: string, manifest: BaseManifest): Promise<void> {
  await writeFileAtomic(path + BASE_MANIFEST_SUFFIX, JSON.stringify(manifest, null, 2) + "\n");
}

/**
 * Change one part of a base backup's manifest as the file holds it now, not as `read` had it: the
 * base's check and the off-site copier each record their own part, sometimes at once, and neither
 * may write back a copy from before the other's. (writeFileAtomic makes their writes take turns.)
 * A manifest gone meanwhile (retention pruned the base) stays gone.
 */
export async function updateBaseManifest(
  path: string,
  read: BaseManifest,
  change: (now: BaseManifest) => BaseManifest,
): Promise<void> {
  const now = (await Bun.file(path + BASE_MANIFEST_SUFFIX)
    .json()
    .catch(() => null)) as BaseManifest | null;
  if (now?.file === read.file) await writeBaseManifest(path, change(now));
}

export type BaseBackup = { name: string; path: string; sizeBytes: number; manifest: BaseManifest };

/**
 * Complete base backups (file and manifest agree on the size), oldest first. With `trust`, one
 * this host may not use is left out and named in `untrusted`.
 */
export async function listBaseBackups(
  backupDir: string,
  trust?: ArchiveTrust,
  untrusted?: Untrusted[],
): Promise<BaseBackup[]> {
  const dir = baseDir(backupDir);
  const out: BaseBackup[] = [];
  for (const name of (await readdir(dir).catch(() => [] as string[])).filter(isBaseName).sort()) {
    const path = join(dir, name);
    const manifest = (await Bun.file(path + BASE_MANIFEST_SUFFIX)
      .json()
      .catch(() => null)) as BaseManifest | null;
    const size = Bun.file(path).size;
    if (!manifest || manifest.baseManifestVersion !== 1 || manifest.file !== name || manifest.sizeBytes !== size)
      continue;
    // A manifest may have been edited or damaged: everything later arithmetic relies on is checked here.
    const seg = manifest.segmentBytes;
    const sane =
      Number.isInteger(seg) &&
      seg >= 1 << 20 &&
      seg <= 1 << 30 &&
      (seg & (seg - 1)) === 0 &&
      Number.isInteger(manifest.timeline) &&
      manifest.timeline > 0 &&
      parseSegment(manifest.startSegment, seg)?.timeline === manifest.timeline &&
      parseSegment(manifest.stopSegment, seg)?.timeline === manifest.timeline &&
      !Number.isNaN(Date.parse(manifest.startedAt)) &&
      !Number.isNaN(Date.parse(manifest.finishedAt)) &&
      typeof manifest.backupManifestFile === "string" &&
      !manifest.backupManifestFile.includes("/");
    if (!sane) continue;
    try {
      parseLsn(manifest.startLsn);
      parseLsn(manifest.stopLsn);
    } catch {
      continue;
    }
    const problem = trust ? baseManifestProblem(manifest, trust) : null;
    if (problem) untrusted?.push({ file: name, problem });
    else out.push({ name, path, sizeBytes: size, manifest });
  }
  return out;
}
