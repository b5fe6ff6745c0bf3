import { recreatePublicSchema, type Sql } from "../db.ts";
import { ShinkeiError } from "../errors.ts";
import { tableCounts } from "../state.ts";
import { createBackup, type BackupResult } from "./dump.ts";
import { content, type Format } from "./inspect.ts";
import type { AgeConfig } from "./crypt.ts";
import { assertVerified, verifyBackup, type Verification } from "./verify.ts";
import { finished, libpqEnv, pump, toolPath } from "./pgtools.ts";

export type RestoreStep = "verify" | "safety-backup" | "restore" | "compare";

export type RestoreOptions = {
  sql: Sql;
  url: string;
  dir: string;
  path: string;
  safetyBackup: boolean;
  env?: Record<string, string | undefined>;
  onStep?: (step: RestoreStep) => void;
  /** Already verified by the caller (it showed the counts before asking): skip a second read. */
  verification?: Verification;
  age?: AgeConfig;
};

export type RestoreResult = {
  verification: Verification;
  safety?: BackupResult;
  counts: Record<string, number>;
  /** Tables whose count differs from the manifest's, as "name: expected N, found M". */
  mismatches: string[];
  durationMs: number;
};

/**
 * pg_dump's plain output never drops what exists, so the schema is emptied first, inside the
 * same transaction as the load: the database ends exactly as in the backup, or exactly as it was.
 */
function prologue(serverVersionNum: number): string {
  return `\\set ON_ERROR_STOP on\nBEGIN;\n${recreatePublicSchema(serverVersionNum)}`;
}

/**
 * Stream the file's SQL into one psql session. We write BEGIN ourselves and COMMIT only after
 * every upstream step succeeded: if anything fails (a damaged file, pg_restore, psql itself) psql is
 * killed before it sees COMMIT, and PostgreSQL rolls the whole load back.
 */
export async function load(url: string, source: ReadableStream<Uint8Array>, format: Format, serverVersionNum: number, env?: Record<string, string | undefined>) {
  const childEnv = { ...process.env, ...env, ...libpqEnv(url) };
  const psql = Bun.spawn([toolPath("psql", env), "-X", "-q", "--no-password", "-f", "-"], { env: childEnv, stdin: "pipe", stdout: "ignore", stderr: "pipe" });
  const psqlExit = finished(psql);
  let committed = false;
  let pgRestore: Bun.Subprocess<"pipe", "pipe", "pipe"> | undefined;
  // psql stops at the first error (ON_ERROR_STOP): stop feeding it rather than write into a dead pipe.
  psql.exited.then(() => committed || pgRestore?.kill("SIGKILL"));
  try {
    psql.stdin.write(prologue(serverVersionNum));
    if (format.startsWith("custom")) {
      pgRestore = Bun.spawn([toolPath("pg_restore", env), "--file=-", "--clean", "--if-exists", "--no-owner"], { env: childEnv, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
      const restoreExit = finished(pgRestore);
      const feed = pump(source, pgRestore.stdin).finally(() => pgRestore!.stdin.end());
      await pump(pgRestore.stdout, psql.stdin);
      await feed;
      const { code, stderr } = await restoreExit;
      if (code !== 0) throw new ShinkeiError("RESTORE_FAILED", `pg_restore failed (exit ${code}): ${stderr}`);
    } else {
      await pump(source, psql.stdin);
    }
    if (psql.exitCode === null) {
      psql.stdin.write("\nCOMMIT;\n");
      committed = true;
    }
  } catch (error) {
    psql.kill("SIGKILL");
    if (error instanceof ShinkeiError) throw error;
    const { stderr } = await psqlExit;
    throw new ShinkeiError("RESTORE_FAILED", `restore stopped: ${stderr || (error as Error).message}`, { cause: error });
  } finally {
    await Promise.resolve(psql.stdin.end()).catch(() => {});
  }
  const { code, stderr } = await psqlExit;
  if (code !== 0 || !committed) {
    throw new ShinkeiError("RESTORE_FAILED", `the restore failed and was rolled back: ${stderr || `psql exit ${code}`}`, {
      hint: "The database is exactly as it was before the restore.",
    });
  }
}

/** Verify, take a safety backup, load in one transaction, compare counts. The caller holds the maintenance lock. */
export async function restoreBackup(options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const { sql, url, path, env } = options;
  options.onStep?.("verify");
  const verification = options.verification ?? (await verifyBackup(path, { quick: true, env, age: options.age }));
  assertVerified(verification);

  // Open (decrypt) first: a missing or wrong key must stop us before the safety backup and the load.
  const source = await content(path, verification.format, options.age, verification.manifest?.encryption);

  let safety: BackupResult | undefined;
  if (options.safetyBackup) {
    options.onStep?.("safety-backup");
    safety = await createBackup({ sql, url, dir: options.dir, reason: "pre-restore", env, age: options.age });
  }

  options.onStep?.("restore");
  const [server] = await sql<{ num: number }[]>`select current_setting('server_version_num')::int as num`;
  await load(url, source, verification.format, server!.num, env);

  options.onStep?.("compare");
  const counts = await tableCounts(sql);
  const mismatches: string[] = [];
  for (const [table, expected] of Object.entries(verification.manifest?.counts ?? {})) {
    if (counts[table] !== expected) mismatches.push(`${table}: expected ${expected}, found ${counts[table] ?? "no table"}`);
  }
  return { verification, safety, counts, mismatches, durationMs: Math.round(performance.now() - started) };
}
