import { actAsDatabaseOwner, connectionLost, recreatePublicSchema, settleWithin, type LockHandle, type Sql } from "../db.ts";
import { ShinkeiError } from "../errors.ts";
import { tableCounts } from "../state.ts";
import type { BackupResult } from "./dump.ts";
import { content, type Format } from "./decode.ts";
import type { AgeConfig } from "./crypt.ts";
import { assertVerified, verifyBackup, type Verification } from "./verify.ts";
import { takeSafetyBackup } from "./safety.ts";
import { tableStats, type TableStats } from "./digest.ts";
import { once } from "node:events";
import type { Writable } from "node:stream";
import { finished as finishedStream } from "node:stream/promises";
import postgres from "postgres";
import { finished, pump, toolEnv, toolPath } from "./pgtools.ts";
import { scriptItems } from "./script.ts";

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
  /** What to let through that this host would refuse: a plain file, one without a manifest. */
  allow?: Allowances;
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
  /** The maintenance lock the caller holds: the load commits only while it is still held. */
  lock?: LockHandle;
};

/**
 * What runs before the file, in the restore's transaction. A deferred constraint trigger on a
 * temporary table fails the COMMIT unless our last statement set a token (the catalog holds only
 * its hash) and the maintenance lock is still held: a backstop behind the classification of every
 * statement (script.ts), should a COMMIT ever get through. Then every schema of the database and
 * every large object is dropped, so the database ends exactly as in the backup, or as it was.
 */
function prologue(serverVersionNum: number, id: string, tokenHash: string, lockHeld: string | undefined): string {
  const table = `pg_temp.shinkei_guard_${id}`;
  return `CREATE FUNCTION pg_temp.shinkei_guard_${id}() RETURNS trigger LANGUAGE plpgsql AS $shinkei$
BEGIN
  IF pg_catalog.md5(pg_catalog.current_setting('shinkei.commit', true)) IS DISTINCT FROM '${tokenHash}' THEN
    RAISE EXCEPTION 'shinkei: the restored file tried to commit the restore''s transaction';
  END IF;
  IF NOT (${lockHeld ?? "true"}) THEN
    RAISE EXCEPTION 'shinkei: the maintenance lock was lost before the restore committed';
  END IF;
  RETURN NULL;
END $shinkei$;
CREATE TABLE ${table} (x int);
CREATE CONSTRAINT TRIGGER shinkei_guard AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.shinkei_guard_${id}();
ALTER TABLE ${table} ENABLE ALWAYS TRIGGER shinkei_guard;
INSERT INTO ${table} VALUES (1);
-- A role that restores on behalf of the database's owner creates what it restores as that owner.
${actAsDatabaseOwner}
DO $shinkei$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname <> 'information_schema' AND nspname !~ '^pg_' LOOP
    EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
END $shinkei$;
${recreatePublicSchema(serverVersionNum)}`;
}

/** pg_restore turns a custom archive into the same SQL a plain dump holds; its exit code is checked at the end. */
function fromArchive(source: ReadableStream<Uint8Array>, env: Record<string, string | undefined> | undefined, url: string) {
  const p = Bun.spawn([toolPath("pg_restore", env), "--file=-", "--no-owner", "--no-privileges"], { env: toolEnv(url, env), stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  const exit = finished(p);
  const feed = pump(source, p.stdin).finally(() => p.stdin.end());
  feed.catch(() => {}); // awaited in done()
  return {
    sql: p.stdout,
    kill: () => p.kill("SIGKILL"),
    async done() {
      await feed;
      const { code, stderr } = await exit;
      if (code !== 0) throw new ShinkeiError("RESTORE_FAILED", `pg_restore failed (exit ${code}): ${stderr}`);
    },
  };
}

/**
 * Load the file's SQL in ONE transaction that only this function ends. Each statement the guard
 * (script.ts) passed goes alone, as one extended-protocol message, so the server runs exactly the
 * statement that was classified; COPY data streams through the COPY protocol. psql is not
 * involved: no meta-command of the file can run. Any failure (a refused statement, a server error,
 * a damaged file, pg_restore, a lost lock) rolls the whole load back.
 */
export async function load(url: string, source: ReadableStream<Uint8Array>, format: Format, serverVersionNum: number, options: LoadOptions = {}) {
  const token = crypto.randomUUID();
  const id = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
  const tokenHash = new Bun.CryptoHasher("md5").update(token).digest("hex");
  const archive = format.startsWith("custom") ? fromArchive(source, options.env, url) : undefined;
  // A connection ended under us (the lock's holder gone, the database dropped) is never written to
  // again: postgres.js on Bun would throw from inside a timer. Checked before every statement.
  let lost = false;
  const sql = postgres(url, {
    max: 1,
    onnotice: () => {},
    fetch_types: false,
    connect_timeout: 10,
    idle_timeout: 0,
    max_lifetime: null,
    connection: { application_name: "shinkei restore (load)" },
    onclose: () => {
      lost = true;
    },
  });
  const run = (text: string, extended = true) => {
    if (lost) throw new ShinkeiError("RESTORE_FAILED", "the connection to the database ended during the restore");
    // `simple: false` (read by postgres.js, missing from its types): the extended protocol, where
    // the server refuses a message holding more than one statement.
    return conn.unsafe(text, [], extended ? ({ simple: false } as postgres.UnsafeQueryOptions) : {});
  };
  let conn: postgres.ReservedSql;
  let at = 0; // the line of the statement being run, for the error
  try {
    await sql`select 1`; // connect first: postgres.js's reserve() waits forever on a pool without fetch_types that never connected
    conn = await sql.reserve();
    await run("BEGIN", false);
    await run(prologue(serverVersionNum, id, tokenHash, options.lock?.heldCondition), false);
    let copy: Writable | undefined;
    for await (const item of scriptItems(archive ? archive.sql : source)) {
      if (item.kind === "statement") {
        at = item.line;
        if (item.copy) {
          // COPY runs as a simple query (postgres.js has no other way): make sure the server reads
          // its text as UTF-8, as the guard did, whatever the file set the client encoding to.
          await run("SET client_encoding = 'UTF8'");
          copy = (await run(item.text, false).writable()) as unknown as Writable;
        } else {
          await run(item.text);
        }
      } else if (item.kind === "data") {
        if (!copy!.write(item.bytes)) await once(copy!, "drain");
      } else {
        copy!.end();
        await finishedStream(copy!);
        copy = undefined;
      }
    }
    await archive?.done();
    at = 0;
    await options.lock?.assertHeld();
    await run(`SELECT pg_catalog.set_config('shinkei.commit', '${token}', true)`);
    await run("COMMIT", false);
  } catch (error) {
    archive?.kill();
    // An error that says the connection is gone (it may come from elsewhere, pg_restore's pipe say:
    // harmless, since this pool is load()'s own and ending it rolls the transaction back too).
    lost ||= connectionLost(error);
    if (!lost && conn!) await settleWithin(conn.unsafe("ROLLBACK"), 5_000);
    if (error instanceof ShinkeiError) throw error;
    const message = (error as Error).message;
    const lockLost = message.includes("maintenance lock was lost");
    throw new ShinkeiError(lockLost ? "LOCK_LOST" : "RESTORE_FAILED", `the restore failed and was rolled back: ${at ? `line ${at}: ` : ""}${message}`, { cause: error });
  } finally {
    if (!lost) conn!?.release();
    await sql.end({ timeout: lost ? 0 : 5 }).catch(() => {});
  }
}

/** What a caller lets through that this host would otherwise refuse (--allow-unencrypted, --allow-unsigned). */
export type Allowances = { unencrypted?: boolean; unsigned?: boolean };

/**
 * A host that encrypts (or holds a key) expects encrypted backups, and one that signs manifests
 * (BACKUP_MANIFEST_KEY) expects a signed manifest: a plain file, or one without a manifest, may
 * be planted. A manifest that is there is checked by verification (signature, name, checksum).
 */
export function refuseUntrusted(v: Verification, age: AgeConfig | undefined, allow: Allowances = {}) {
  const expectsEncryption = Boolean(age && (age.recipients.length || age.passphrase || age.identityFile));
  if (expectsEncryption && !v.format.endsWith("+age") && !allow.unencrypted) {
    throw new ShinkeiError("UNENCRYPTED_BACKUP", `${v.file} is not encrypted, and this host encrypts its backups`, {
      hint: "Nothing was changed. If you know where this file comes from, pass --allow-unencrypted.",
    });
  }
  if (age?.manifestKey && !v.manifest && !allow.unsigned) {
    throw new ShinkeiError("UNSIGNED_BACKUP", `${v.file} has no manifest, and BACKUP_MANIFEST_KEY is set: nothing shows that shinkei wrote it`, {
      hint: "Nothing was changed. If you know where this file comes from, pass --allow-unsigned (its row counts are then not compared).",
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
  refuseUntrusted(verification, options.age, options.allow);

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
    await load(url, source, verification.format, server!.num, { env, lock: options.lock });
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
