import { copyFile, readFile, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { freshDatabase, type TestDatabase } from "./db.ts";
import { seedSample, tempDir } from "./fixtures.ts";
import { migrate } from "../../src/migrations/migrate.ts";
import { libpqEnv } from "../../src/pg/tools.ts";

/**
 * A database of the test file's own, migrated and holding seedSample's rows (tagged `tag`);
 * `server`: another server than the shared one (a test cluster), as freshDatabase takes it.
 */
export async function seededDatabase(label: string, tag = label, server?: string): Promise<TestDatabase> {
  const db = await freshDatabase(label, server);
  await migrate(db.sql);
  await seedSample(db.sql, tag);
  return db;
}

/** A new, empty backup folder, and the environment that points the binary at it and at `db`. */
export async function backupFolder(
  db: TestDatabase,
  label: string,
  extra: Record<string, string> = {},
): Promise<{ dir: string; env: Record<string, string> }> {
  const dir = await tempDir(label);
  return { dir, env: { DATABASE_URL: db.url, BACKUP_DIR: dir, ...extra } };
}

/** A dump made by stock pg_dump, as an older script or another tool would have left it. */
export async function stockDump(url: string, file: string, args: string[] = []): Promise<void> {
  const p = Bun.spawn(["pg_dump", ...args, "-f", file], { env: { ...process.env, ...libpqEnv(url) }, stderr: "pipe" });
  if ((await p.exited) !== 0) throw new Error(`pg_dump failed: ${await new Response(p.stderr).text()}`);
}

/**
 * Make a backup of ours slow to load: its SQL gets a materialized view that takes `seconds` to fill
 * (the restore lets no bare SELECT pg_sleep through) after pg_dump's settings, and the manifest the
 * new checksum (the data, its counts and digests are unchanged). For tests that stop a restore,
 * drill or recovery while it loads. Plain (unencrypted, unsigned) only.
 */
export async function slowToLoad(path: string, seconds: number): Promise<void> {
  const sql = new TextDecoder().decode(Bun.zstdDecompressSync(new Uint8Array(await Bun.file(path).arrayBuffer())));
  const at = sql.indexOf("\n\n", sql.indexOf("SET row_security"));
  const slowed = Bun.zstdCompressSync(
    new TextEncoder().encode(
      `${sql.slice(0, at)}\nCREATE MATERIALIZED VIEW public.slow_to_load AS SELECT ` +
        `pg_catalog.pg_sleep(${seconds})::text AS slept;\n${sql.slice(at)}`,
    ),
  );
  await Bun.write(path, slowed);
  const manifest = await Bun.file(`${path}.manifest.json`).json();
  manifest.sizeBytes = slowed.length;
  manifest.sha256 = new Bun.CryptoHasher("sha256").update(slowed).digest("hex");
  await Bun.write(`${path}.manifest.json`, JSON.stringify(manifest, null, 2));
}

/**
 * A backup and its manifest copied into `dir` (a test's own BACKUP_DIR): its path there. With
 * `database`, the manifest names that database: a backup of a template taken once, standing for
 * one of each copy made from it (a restore or recover picks only its own database's by default).
 */
export async function copyBackup(path: string, dir: string, database?: string): Promise<string> {
  const copy = join(dir, basename(path));
  await copyFile(path, copy);
  const manifest = JSON.parse(await readFile(`${path}.manifest.json`, "utf8"));
  if (database) manifest.database = database;
  await writeFile(`${copy}.manifest.json`, JSON.stringify(manifest, null, 2));
  return copy;
}
