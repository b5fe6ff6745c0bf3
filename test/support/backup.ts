import { freshDatabase, type TestDatabase } from "./db.ts";
import { seedSample, tempDir } from "./fixtures.ts";
import { migrate } from "../../src/migrations/migrate.ts";
import { libpqEnv } from "../../src/backup/pgtools.ts";

/** A database of the test file's own, migrated and holding seedSample's rows (tagged `tag`). */
export async function seededDatabase(label: string, tag = label): Promise<TestDatabase> {
  const db = await freshDatabase(label);
  await migrate(db.sql);
  await seedSample(db.sql, tag);
  return db;
}

/** A new, empty backup folder, and the environment that points the binary at it and at `db`. */
export async function backupFolder(db: TestDatabase, label: string, extra: Record<string, string> = {}): Promise<{ dir: string; env: Record<string, string> }> {
  const dir = await tempDir(label);
  return { dir, env: { DATABASE_URL: db.url, BACKUP_DIR: dir, ...extra } };
}

/** A dump made by stock pg_dump, as an older script or another tool would have left it. */
export async function stockDump(url: string, file: string, args: string[] = []): Promise<void> {
  const p = Bun.spawn(["pg_dump", ...args, "-f", file], { env: { ...process.env, ...libpqEnv(url) }, stderr: "pipe" });
  if ((await p.exited) !== 0) throw new Error(`pg_dump failed: ${await new Response(p.stderr).text()}`);
}
