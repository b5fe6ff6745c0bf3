import { lstat, mkdir, rename, rm, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import type { Sql } from "../pg/db.ts";
import { describeTarget } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { tableStats } from "./digest.ts";
import { currentSchemaVersion } from "../pg/schema.ts";
import { backupName, ENCRYPTED_EXTENSION, OUR_EXTENSION } from "../storage/naming.ts";
import { encryptionFor, type AgeConfig } from "../storage/crypt.ts";
import { sealTo } from "../storage/seal.ts";
import { signManifest, writeManifest, type Manifest, type Reason } from "./manifest.ts";
import { fsyncDir, keptAlive, removeStalePartials, reservePartial } from "../storage/files.ts";
import { checkDumpVersion, toolPath } from "../pg/bin.ts";
import { finished, toolEnv } from "../pg/tools.ts";

export type Progress = { bytesIn: number; bytesOut: number };

export type BackupOptions = {
  sql: Sql;
  url: string;
  dir: string;
  reason: Reason;
  compressionLevel?: number;
  onProgress?: (p: Progress) => void;
  env?: Record<string, string | undefined>;
  /** Encrypt while streaming, before anything touches the disk (BACKUP_AGE_RECIPIENTS or _PASSPHRASE). */
  age?: AgeConfig;
};

export type BackupResult = { path: string; manifest: Manifest };

/**
 * A name of its own for this backup: its `.partial` is made new (O_EXCL) as the name is chosen, so
 * a backup of another database into the same folder in the same second takes the next one. Looking
 * first and creating later let both choose one name; the later rename wrote over the other's backup.
 */
async function reserveName(dir: string, at: Date, extension: string): Promise<{ name: string; file: FileHandle }> {
  for (let seq = 0; seq < 1000; seq++) {
    const name = backupName(at, seq, extension);
    // lstat: a dangling symbolic link takes a name too.
    if (
      await lstat(join(dir, name)).then(
        () => true,
        () => false,
      )
    )
      continue;
    const file = await reservePartial(join(dir, `${name}.partial`));
    if (!file) continue;
    // Finished meanwhile under this name by someone who reserved it before us: not ours after all.
    if (
      await lstat(join(dir, name)).then(
        () => true,
        () => false,
      )
    ) {
      await file.close();
      await rm(join(dir, `${name}.partial`), { force: true });
      continue;
    }
    return { name, file };
  }
  throw new ShinkeiError("BACKUP_FAILED", "too many backups within one second");
}

/**
 * pg_dump (plain SQL) -> zstd on our side -> SHA-256 and byte count -> a `.partial` file -> fsync
 * -> rename -> manifest. `pg_dump -Fc` compresses on the same core it dumps on; compressing here
 * overlaps the two, and plain SQL (no per-row block headers) compresses smaller than the custom
 * archive. It also restores with `zstd -d` and psql alone. zstd, not gzip: about five times less
 * CPU to write, and a restore judges the file no faster than it decompresses it (gzip's
 * decompression was most of the judge's time). The caller holds the maintenance lock.
 */
export async function createBackup(options: BackupOptions): Promise<BackupResult> {
  const { sql, url, dir, reason } = options;
  const started = performance.now();
  await mkdir(dir, { recursive: true, mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
    throw new ShinkeiError("BACKUP_FAILED", `cannot use the backup folder ${dir}: ${e.code ?? e.message}`, {
      hint: "Point BACKUP_DIR at a writable folder. Nothing was changed.",
    });
  });
  await removeStalePartials(dir, 10 * 60_000);

  const [server] = await sql<{ num: number; text: string }[]>`
    select current_setting('server_version_num')::int as num, current_setting('server_version') as text`;
  const versions = await checkDumpVersion(server!.num, options.env);
  const pgDump = toolPath("pg_dump", options.env);

  const encryption = encryptionFor(options.age);
  const createdAt = new Date();
  const { name, file } = await reserveName(dir, createdAt, encryption ? ENCRYPTED_EXTENSION : OUR_EXTENSION);
  /** Whether the reserved .partial was already removed (a failed dump): see the catch below. */
  let released = false;
  const path = join(dir, name);
  const partial = `${path}.partial`;

  // One repeatable-read transaction exports its snapshot to pg_dump: the counts in the manifest
  // describe exactly the data in the file, even while the app keeps writing.
  // A backup of another database in this folder must not take the .partial for a leftover while
  // pg_dump waits (on a lock) without writing: keptAlive keeps its time fresh.
  const result = await keptAlive(partial, () =>
    sql.begin("isolation level repeatable read read only", async (tx) => {
      const [snap] = await tx<{ id: string }[]>`select pg_export_snapshot() as id`;
      const schemaVersion = await currentSchemaVersion(tx);
      // Owners and privileges are left out as `pg_restore --no-owner --no-privileges` would: a backup
      // restores wherever its user can create tables, also on a server without the original roles.
      const proc = Bun.spawn(
        [pgDump, "--format=plain", "--no-owner", "--no-privileges", `--snapshot=${snap!.id}`, "--no-password"],
        {
          env: toolEnv(url, options.env),
          stdin: "ignore",
          stdout: "pipe",
          stderr: "pipe",
        },
      );
      const exit = finished(proc);
      // Counts and digests are read in the exported snapshot while pg_dump streams: same data, no added wait.
      const stats = tableStats(tx);
      stats.catch(() => {}); // awaited below; a failed dump must not leave it unhandled
      try {
        const sealed = await sealTo(
          Readable.fromWeb(proc.stdout as import("node:stream/web").ReadableStream),
          partial,
          {
            codec: "zstd",
            level: options.compressionLevel,
            age: encryption ? options.age : undefined,
            onProgress: options.onProgress,
            file,
          },
        );
        const { code, stderr } = await exit;
        if (code !== 0)
          throw new ShinkeiError("BACKUP_FAILED", `pg_dump failed (exit ${code}): ${stderr || "no message"}`);
        if (sealed.bytesIn === 0) throw new ShinkeiError("BACKUP_FAILED", "pg_dump produced no output");
        const { counts, digests } = await stats;
        return { counts, digests, schemaVersion, sizeBytes: sealed.sizeBytes, sha256: sealed.sha256 };
      } catch (error) {
        proc.kill("SIGKILL");
        await rm(partial, { force: true });
        released = true;
        if (error instanceof ShinkeiError) throw error;
        const e = error as NodeJS.ErrnoException;
        const why = e.code === "ENOSPC" ? "the disk is full" : e.message;
        throw new ShinkeiError("BACKUP_FAILED", `writing the backup failed: ${why}`, {
          cause: error,
          hint: `Nothing was kept; check ${dir}.`,
        });
      }
    }),
  ).catch(async (error: unknown) => {
    // Failed before the dump was written (its snapshot, say): the reserved name goes back, once: a
    // second removal could take the .partial another backup reserved under the name meanwhile.
    await file.close().catch(() => {});
    if (!released) await rm(partial, { force: true });
    throw error;
  });

  await rename(partial, path);
  await fsyncDir(dir);
  const target = describeTarget(url);
  const manifest: Manifest = {
    manifestVersion: 1,
    file: name,
    createdAt: createdAt.toISOString(),
    reason,
    database: target.database,
    host: target.host,
    port: target.port,
    serverVersion: server!.text,
    pgDumpVersion: versions.pgDump,
    schemaVersion: result.schemaVersion,
    format: encryption ? "plain+zstd+age" : "plain+zstd",
    encryption,
    sizeBytes: result.sizeBytes,
    sha256: result.sha256,
    durationMs: Math.round(performance.now() - started),
    counts: result.counts,
    digests: result.digests,
  };
  if (options.age?.manifestKey) manifest.signature = signManifest(manifest, options.age.manifestKey);
  await writeManifest(path, manifest);
  return { path, manifest };
}
