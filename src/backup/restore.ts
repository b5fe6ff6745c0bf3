import { recreatePublicSchema, type LockHandle, type Sql } from "../db.ts";
import { ShinkeiError } from "../errors.ts";
import { tableCounts } from "../state.ts";
import type { BackupResult } from "./dump.ts";
import { content, type Format } from "./inspect.ts";
import type { AgeConfig } from "./crypt.ts";
import { assertVerified, verifyBackup, type Verification } from "./verify.ts";
import { takeSafetyBackup } from "./safety.ts";
import { tableStats, type TableStats } from "./digest.ts";
import { finished, psqlHasRestrict, pump, toolEnv, toolPath } from "./pgtools.ts";
import { guardScript } from "./script.ts";

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
  /** The maintenance lock the caller holds: the load commits only while it is still held. */
  lock?: LockHandle;
  /** Restore a plain file although this host encrypts its backups (--allow-unencrypted). */
  allowUnencrypted?: boolean;
};

export type RestoreResult = {
  verification: Verification;
  safety?: BackupResult;
  counts: Record<string, number>;
  /** Tables whose count differs from the manifest's, as "name: expected N, found M". */
  mismatches: string[];
  durationMs: number;
};

export type LoadOptions = {
  env?: Record<string, string | undefined>;
  /** A SQL condition (LockHandle.heldCondition) that must still hold at COMMIT, or nothing commits. */
  lockHeld?: string;
};

/**
 * What psql runs before the file: one transaction that nothing but our own last statement can
 * commit, then everything the database's own schemas and large objects hold is dropped in it, so
 * the database ends exactly as in the backup, or exactly as it was.
 *
 * The guard is a deferred constraint trigger on a temporary table: it fires at COMMIT and fails it
 * unless our closing statement set a token the file cannot know, and unless the maintenance lock
 * is still held. It backs up the lexer (script.ts): whatever way a COMMIT got through, it fails,
 * and psql (ON_ERROR_STOP) stops there.
 */
function prologue(serverVersionNum: number, token: string, lockHeld: string | undefined, restrictKey: string | undefined): string {
  const table = `pg_temp.shinkei_commit_guard_${token}`;
  return `BEGIN;
CREATE FUNCTION pg_temp.shinkei_commit_guard_${token}() RETURNS trigger LANGUAGE plpgsql AS $shinkei$
BEGIN
  IF pg_catalog.current_setting('shinkei.commit', true) IS DISTINCT FROM '${token}' THEN
    RAISE EXCEPTION 'shinkei: the restored file tried to commit the restore''s transaction';
  END IF;
  IF NOT (${lockHeld ?? "true"}) THEN
    RAISE EXCEPTION 'shinkei: the maintenance lock was lost before the restore committed';
  END IF;
  RETURN NULL;
END $shinkei$;
CREATE TABLE ${table} (x int);
CREATE CONSTRAINT TRIGGER shinkei_commit_guard AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.shinkei_commit_guard_${token}();
ALTER TABLE ${table} ENABLE ALWAYS TRIGGER shinkei_commit_guard;
INSERT INTO ${table} VALUES (1);
-- A role that restores on behalf of the database's owner (a member of it, as the backup service's
-- role is of the app's) creates what it restores as that owner, so the app can use it afterwards.
SELECT pg_catalog.set_config('role', pg_catalog.pg_get_userbyid(d.datdba), true) FROM pg_catalog.pg_database d
 WHERE d.datname = pg_catalog.current_database() AND pg_catalog.pg_get_userbyid(d.datdba) <> current_user
   AND pg_catalog.pg_has_role(d.datdba, 'MEMBER') AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
DO $shinkei$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname <> 'information_schema' AND nspname !~ '^pg_' LOOP
    EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
END $shinkei$;
${recreatePublicSchema(serverVersionNum)}${restrictKey ? `\\restrict ${restrictKey}\n` : ""}`;
}

const epilogue = (token: string) => `\nSELECT pg_catalog.set_config('shinkei.commit', '${token}', true);\nCOMMIT;\n`;

/**
 * Stream the file's SQL into one psql session, through the guard (script.ts), inside a transaction
 * only we commit: if anything fails (a refused statement, a damaged file, pg_restore, psql, a lost
 * lock) psql is killed or stops before COMMIT, and PostgreSQL rolls the whole load back.
 */
export async function load(url: string, source: ReadableStream<Uint8Array>, format: Format, serverVersionNum: number, options: LoadOptions = {}) {
  const { env } = options;
  const childEnv = toolEnv(url, env);
  const token = crypto.randomUUID().replaceAll("-", "");
  const restrictKey = (await psqlHasRestrict(env)) ? crypto.randomUUID().replaceAll("-", "") : undefined;
  const psql = Bun.spawn([toolPath("psql", env), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "-f", "-"], { env: childEnv, stdin: "pipe", stdout: "ignore", stderr: "pipe" });
  const psqlExit = finished(psql);
  let committed = false;
  let pgRestore: Bun.Subprocess<"pipe", "pipe", "pipe"> | undefined;
  // psql stops at the first error (ON_ERROR_STOP): stop feeding it rather than write into a dead pipe.
  psql.exited.then(() => committed || pgRestore?.kill("SIGKILL"));
  try {
    psql.stdin.write(prologue(serverVersionNum, token, options.lockHeld, restrictKey));
    if (format.startsWith("custom")) {
      pgRestore = Bun.spawn([toolPath("pg_restore", env), "--file=-", "--clean", "--if-exists", "--no-owner", "--no-privileges"], { env: childEnv, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
      const restoreExit = finished(pgRestore);
      const feed = pump(source, pgRestore.stdin).finally(() => pgRestore!.stdin.end());
      await pump(guardScript(pgRestore.stdout), psql.stdin);
      await feed;
      const { code, stderr } = await restoreExit;
      if (code !== 0) throw new ShinkeiError("RESTORE_FAILED", `pg_restore failed (exit ${code}): ${stderr}`);
    } else {
      await pump(guardScript(source), psql.stdin);
    }
    if (psql.exitCode === null) {
      psql.stdin.write(epilogue(token));
      committed = true;
    }
  } catch (error) {
    psql.kill("SIGKILL");
    pgRestore?.kill("SIGKILL");
    if (error instanceof ShinkeiError) throw error;
    const { stderr } = await psqlExit;
    throw new ShinkeiError("RESTORE_FAILED", `restore stopped: ${stderr || (error as Error).message}`, { cause: error });
  } finally {
    await Promise.resolve(psql.stdin.end()).catch(() => {});
  }
  const { code, stderr } = await psqlExit;
  if (code !== 0 || !committed) {
    const lockLost = stderr.includes("maintenance lock was lost");
    throw new ShinkeiError(lockLost ? "LOCK_LOST" : "RESTORE_FAILED", `the restore failed and was rolled back: ${stderr || `psql exit ${code}`}`);
  }
}

/** A restore host that encrypts (or holds a key) expects encrypted backups: a plain one may be a planted file. */
export function refuseUnencrypted(v: Verification, age: AgeConfig | undefined, allowed: boolean) {
  const expectsEncryption = Boolean(age && (age.recipients.length || age.passphrase || age.identityFile));
  if (expectsEncryption && !v.format.endsWith("+age") && !allowed) {
    throw new ShinkeiError("UNENCRYPTED_BACKUP", `${v.file} is not encrypted, and this host encrypts its backups`, {
      hint: "Nothing was changed. If you know where this file comes from, pass --allow-unencrypted.",
    });
  }
}

/**
 * After a failed load PostgreSQL has rolled everything back; we say so only after looking: every
 * table's count and digest now, against the state before the load (the safety backup's manifest,
 * taken moments before, or read directly when there was none).
 */
async function checkedRollback(sql: Sql, before: TableStats, error: unknown): Promise<unknown> {
  if (!(error instanceof ShinkeiError)) return error;
  let hint: string;
  try {
    const after = await sql.begin((tx) => tableStats(tx));
    const changed = [...new Set([...Object.keys(before.counts), ...Object.keys(after.counts)])]
      .filter((t) => before.counts[t] !== after.counts[t] || (before.digests[t] !== undefined && before.digests[t] !== after.digests[t]));
    hint = changed.length === 0
      ? "Checked: every table's row count and content digest are as they were before the restore. Nothing was changed."
      : `PostgreSQL rolled the restore back, but ${changed.join(", ")} differ from before it: other clients wrote meanwhile? Compare with shinkei status.`;
  } catch (e) {
    hint = `PostgreSQL rolls a failed transaction back, but checking the database afterwards failed: ${(e as Error).message}`;
  }
  return new ShinkeiError(error.code, error.message, { hint, cause: error.cause, details: error.details });
}

/**
 * Verify, take and verify a safety backup, load in one transaction, compare counts. The caller
 * holds the maintenance lock and passes its handle, so the load commits only while it is held.
 */
export async function restoreBackup(options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const { sql, url, path, env } = options;
  options.onStep?.("verify");
  const verification = options.verification ?? (await verifyBackup(path, { quick: true, env, age: options.age }));
  assertVerified(verification);
  refuseUnencrypted(verification, options.age, options.allowUnencrypted ?? false);

  // Open (decrypt) first: a missing or wrong key must stop us before the safety backup and the load.
  const source = await content(path, verification.format, options.age, verification.manifest?.encryption);

  let safety: BackupResult | undefined;
  let before: TableStats;
  if (options.safetyBackup) {
    options.onStep?.("safety-backup");
    safety = await takeSafetyBackup({ sql, url, dir: options.dir, reason: "pre-restore", env, age: options.age });
    before = { counts: safety.manifest.counts, digests: safety.manifest.digests ?? {} };
  } else {
    before = await sql.begin((tx) => tableStats(tx));
  }

  options.onStep?.("restore");
  const [server] = await sql<{ num: number }[]>`select current_setting('server_version_num')::int as num`;
  try {
    await load(url, source, verification.format, server!.num, { env, lockHeld: options.lock?.heldCondition });
  } catch (error) {
    throw await checkedRollback(sql, before, error);
  }

  options.onStep?.("compare");
  const counts = await tableCounts(sql);
  const mismatches: string[] = [];
  for (const [table, expected] of Object.entries(verification.manifest?.counts ?? {})) {
    if (counts[table] !== expected) mismatches.push(`${table}: expected ${expected}, found ${counts[table] ?? "no table"}`);
  }
  return { verification, safety, counts, mismatches, durationMs: Math.round(performance.now() - started) };
}
