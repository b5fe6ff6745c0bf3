import {
  actAsDatabaseOwner,
  connectionLost,
  recreatePublicSchema,
  LOGIN_SEARCH_PATH,
  settleWithin,
  type LockHandle,
  type Sql,
} from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { ownSchema, tableCounts } from "../pg/tables.ts";
import type { BackupResult } from "./dump.ts";
import { content, plainOf, type Format } from "./decode.ts";
import type { AgeConfig } from "../storage/crypt.ts";
import { assertVerified, checkedRead, verifyBackup, type Verification } from "./verify.ts";
import { takeSafetyBackup } from "../guarded/safety.ts";
import { tableStats, type TableStats } from "./digest.ts";
import { once } from "node:events";
import { mkdir } from "node:fs/promises";
import type { Writable } from "node:stream";
import { finished as finishedStream } from "node:stream/promises";
import postgres from "postgres";
import { toolPath } from "../pg/bin.ts";
import { finished, pump, toolEnv } from "../pg/tools.ts";
import { collectEvery, judgeScript, type Judged } from "./judge.ts";
import { Rec, Spool } from "./spool.ts";
import { loadRole, planLoadRole, releaseLoadRole, type LoadRoleOptions } from "./loadrole.ts";

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
  /** Where the judged file waits while the rest is judged (a folder only this user can enter is made in it). */
  spoolDir?: string;
  /** The maintenance lock the caller holds: the load commits only while it is still held. */
  lock?: LockHandle;
  /** Who the file's statements run as (loadrole.ts): never a role that reaches the server's OS, unless allowed. */
  role?: LoadRoleOptions;
};

/**
 * What runs before the file, in the restore's transaction. A deferred constraint trigger on a
 * temporary table fails the COMMIT unless our last statement set a token (the catalog holds only
 * its hash) and the maintenance lock is still held: a backstop behind the judgement of every
 * statement (judge.ts), should a COMMIT ever get through; checked unchanged before COMMIT. Then
 * every schema of the database and every large object is dropped, so the database ends exactly as
 * in the backup, or as it was.
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
CREATE CONSTRAINT TRIGGER shinkei_guard AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION pg_temp.shinkei_guard_${id}();
ALTER TABLE ${table} ENABLE ALWAYS TRIGGER shinkei_guard;
INSERT INTO ${table} VALUES (1);
-- The check before COMMIT reads the row as the database's owner (below), not as this role.
GRANT SELECT ON ${table} TO PUBLIC;
-- A role that restores on behalf of the database's owner creates what it restores as that owner.
${actAsDatabaseOwner}
DO $shinkei$
DECLARE s text;
BEGIN
  FOR s IN SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE ${ownSchema("n")} LOOP
    EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
  -- Extensions the database's owner (not a superuser) put outside its schemas (citext in pg_catalog)
  -- are its content too: a dump brings them back, and one no file brings back must not outlive it.
  FOR s IN SELECT e.extname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
            WHERE NOT (${ownSchema("n")})
              AND e.extowner = (SELECT d.datdba FROM pg_catalog.pg_database d
                                 WHERE d.datname = pg_catalog.current_database())
              AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = e.extowner) LOOP
    EXECUTE pg_catalog.format('DROP EXTENSION %I CASCADE', s);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
END $shinkei$;
${recreatePublicSchema(serverVersionNum)}`;
}

/** pg_restore turns a custom archive into the same SQL a plain dump holds; its exit code is checked at the end. */
function fromArchive(
  source: ReadableStream<Uint8Array>,
  env: Record<string, string | undefined> | undefined,
  url: string,
) {
  const p = Bun.spawn([toolPath("pg_restore", env), "--file=-", "--no-owner", "--no-privileges"], {
    env: toolEnv(url, env),
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
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

/** What a load sent and checked: the rows each COPY target was sent (and now holds). */
export type LoadResult = {
  statements: number;
  copied: Record<string, number>;
  /** Every table's row count (tableCounts' keys), read in the restore's transaction before COMMIT. */
  counts: Record<string, number>;
};

/** A file judged whole into a spool (judgeFile): what apply() loads. */
export type JudgedFile = { spool: Spool; judged: Judged };

/**
 * Load the file's SQL in ONE transaction that only this function ends. The whole file is judged
 * first (judge.ts: PostgreSQL's grammar, an allowlist) into a spool, so a refusal anywhere, even
 * at the last line, runs nothing. Then each statement goes alone, as one extended-protocol
 * message, so the server runs exactly the statement that was judged; each COPY is the judge's own
 * `COPY table (columns) FROM STDIN`, its data streamed through the COPY protocol. Before COMMIT
 * the result is checked (see checkLoaded). Any failure (a refused statement, a server error, a
 * damaged file, pg_restore, a failed check, a lost lock) rolls the whole load back.
 */
export async function load(
  url: string,
  source: ReadableStream<Uint8Array>,
  format: Format,
  options: LoadOptions = {},
): Promise<LoadResult> {
  const file = await judgeFile(url, source, format, options);
  try {
    // Judged first, so a refused file makes no role either.
    const as = await loadRole(url, options.role);
    let loaded: LoadResult;
    try {
      loaded = await apply(as.url, file, options);
    } catch (error) {
      await releaseLoadRole(as);
      throw error;
    }
    await releaseLoadRole(as);
    return loaded;
  } finally {
    file.spool.remove();
  }
}

/** Judge the whole file into a spool (nothing is sent anywhere); the caller removes the spool. */
export async function judgeFile(
  url: string,
  source: ReadableStream<Uint8Array>,
  format: Format,
  options: Pick<LoadOptions, "env" | "spoolDir"> & { signal?: AbortSignal } = {},
): Promise<JudgedFile> {
  const archive = format.startsWith("custom") ? fromArchive(source, options.env, url) : undefined;
  const spool = new Spool(options.spoolDir);
  try {
    const sql = archive ? archive.sql : source;
    const judged = await judgeScript(options.signal ? untilAborted(sql, options.signal) : sql, spool);
    await archive?.done();
    return { spool, judged };
  } catch (error) {
    archive?.kill();
    spool.remove();
    throw error;
  }
}

/** The chunks of `source` until `signal` aborts (seen as each comes): then its error; the source is cancelled. */
async function* untilAborted(source: AsyncIterable<Uint8Array>, signal: AbortSignal) {
  for await (const chunk of source) {
    signal.throwIfAborted();
    yield chunk;
  }
}

/** Load a judged file (see load); the spool stays for the caller to remove. */
export async function apply(
  url: string,
  { spool, judged }: JudgedFile,
  options: Pick<LoadOptions, "lock">,
): Promise<LoadResult> {
  const token = crypto.randomUUID();
  const id = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
  const tokenHash = new Bun.CryptoHasher("md5").update(token).digest("hex");
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
    // As connect(): pg_catalog first (implicitly) until the file sets its own path; see checkLoaded.
    connection: { application_name: "shinkei restore (load)", ...LOGIN_SEARCH_PATH },
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
  let copy: Writable | undefined;
  let copyError: Error | undefined;
  let line = 0; // the line of the statement being run, for the error
  try {
    // Connect first (postgres.js's reserve() waits forever on a pool without fetch_types that never
    // connected), asking the server its version: the prologue and the checks are written for it.
    const [server] = await sql<{ num: number }[]>`
      select pg_catalog.current_setting('server_version_num')::int4 as num`;
    const serverVersionNum = server!.num;
    conn = await sql.reserve();
    await run("BEGIN", false);
    // The judge read the file with these: the server must read it the same way, whatever the
    // database's defaults say.
    await run("SET standard_conforming_strings = on");
    await run("SET client_encoding = 'UTF8'");
    // A restore killed mid-statement (an index build, a slow view) would otherwise hold its locks on
    // the database until that statement ends; the server checks for a vanished client every second.
    if (serverVersionNum >= 140000) await run("SET client_connection_check_interval = '1s'");
    await run(prologue(serverVersionNum, id, tokenHash, options.lock?.heldCondition), false);
    const before = await watched(conn, id);
    const extensions = madeByStatements(before.members);
    // Statements go without waiting for each one's answer (pipelined: each is still a message of its
    // own, in the extended protocol). The server runs them in order and, after an error, refuses the
    // rest (the transaction is aborted). They are waited for before a COPY, at the end, and every
    // PIPELINE of them; the first error is reported with its statement's line.
    let inflight: { query: Promise<unknown>; line: number }[] = [];
    let inflightBytes = 0;
    const settle = async () => {
      const all = inflight;
      inflight = [];
      inflightBytes = 0;
      for (const q of all) {
        line = q.line;
        await q.query;
      }
    };
    let pieces: Uint8Array[] = [];
    for (const rec of spool.records()) {
      if (rec.type === Rec.Data) {
        if (!copy!.write(rec.bytes)) await once(copy!, "drain");
        collectEvery(rec.bytes.length);
        continue;
      }
      // A statement's bytes are views of the spool's read buffers, reused as it reads on: a
      // statement in several pieces keeps copies. COPY data needs none: postgres.js copies each
      // piece into its message when the stream hands it on, and the stream holds pieces only
      // until its high-water mark (64 KiB) is passed, by at most one (256 KiB): then the loop
      // waits for the drain, which comes once it holds none.
      if (rec.more) {
        pieces.push(new Uint8Array(rec.bytes)); // a copy (a Buffer's slice() would not be)
        continue;
      }
      pieces.push(rec.bytes);
      const whole = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
      pieces = [];
      if (rec.type !== Rec.EndCopy) line = new DataView(whole.buffer, whole.byteOffset).getUint32(0, true);
      const text = decoder.decode(whole.subarray(4));
      if (rec.type === Rec.Extension) {
        // Run alone, between two looks at the catalog: what it made is noted as the file's.
        await settle();
        line = new DataView(whole.buffer, whole.byteOffset).getUint32(0, true);
        const present = await extensionOids(conn);
        await run(text);
        await extensions.note(conn, present);
      } else if (rec.type === Rec.Statement) {
        const query = run(text);
        query.catch(() => {}); // reported by settle(), in order
        inflight.push({ query, line });
        inflightBytes += whole.length;
        if (inflight.length >= PIPELINE || inflightBytes >= PIPELINE_BYTES) await settle();
      } else if (rec.type === Rec.Copy) {
        const at = line;
        await settle();
        line = at;
        // The judge's own text: the only thing ever sent where the server would run several statements.
        const query = run(text, false);
        // An error the server sends after the COPY's end reaches only this (already settled)
        // query's reject: keep it, to report the server's own words.
        const reject = (query as unknown as { reject: (e: Error) => void }).reject;
        (query as unknown as { reject: (e: Error) => void }).reject = (e) => {
          copyError = e;
          reject(e);
        };
        copy = (await query.writable()) as unknown as Writable;
        copy.on("error", () => {}); // reported by finished() or the next write
        query.catch(() => {}); // its failure is the stream's: a COPY cut short must not surface twice
      } else {
        // postgres.js settles the stream only on the COPY's success, or on an error that comes
        // before its end: an error that comes after (the server reads COPY data in blocks) would
        // leave it waiting forever. A query queued behind the COPY (once the stream has handed
        // the end to the server: before, postgres.js refuses it) settles either way.
        const ending = copy!;
        const ended = new Promise<void>((resolve) => {
          const final = (ending as any)._final;
          (ending as any)._final = (callback: (e?: Error) => void) => {
            final.call(ending, callback);
            resolve();
          };
        });
        ending.end();
        await Promise.race([ended, finishedStream(ending)]);
        const probe = run("SELECT 1").then(
          () => finishedStream(copy!),
          (e: Error) => {
            throw new ShinkeiError(
              "RESTORE_FAILED",
              `the restore failed and was rolled back: line ${line}: ${(copyError ?? e).message}`,
              { cause: copyError ?? e },
            );
          },
        );
        probe.catch(() => {});
        await Promise.race([finishedStream(copy!), probe]);
        await probe;
        copy = undefined;
      }
    }
    await settle();
    line = 0;
    // An unqualified COPY target is found on the file's search_path: resolved to an oid now, by
    // one pg_catalog call and no operator. Then, to COMMIT, only pg_catalog's functions and
    // operators are found (the guard's trigger and the checks included): none the file defined can
    // stand in for one of ours, whatever path it set (even one with pg_catalog after public).
    const targets = await resolveTargets(conn, judged);
    await run("SET LOCAL search_path = pg_catalog, pg_temp", false);
    // Deferred constraints (foreign keys declared DEFERRABLE) fire now, not at COMMIT after the
    // checks; the guard fires with them, so its token is set first.
    await run(`SELECT pg_catalog.set_config('shinkei.commit', '${token}', true)`);
    await run("SET CONSTRAINTS ALL IMMEDIATE", false);
    const counts = await checkLoaded(conn, id, before, judged, targets, serverVersionNum, extensions);
    await options.lock?.assertHeld();
    await run("COMMIT", false);
    return {
      statements: judged.statements,
      copied: Object.fromEntries([...judged.copied].map(([k, v]) => [k, v.rows])),
      counts,
    };
  } catch (error) {
    // A COPY still open holds the connection in the COPY protocol: end the connection instead
    // (the server rolls the transaction back) rather than writing a ROLLBACK into it.
    if (copy) {
      copy.destroy();
      lost = true;
    }
    // An error that says the connection is gone: harmless, since this pool is load()'s own and
    // ending it rolls the transaction back too.
    lost ||= connectionLost(error);
    if (!lost && conn!) await settleWithin(conn.unsafe("ROLLBACK"), 5_000);
    if (error instanceof ShinkeiError) throw error;
    const message = (error as Error).message;
    const lockLost = message.includes("maintenance lock was lost");
    throw new ShinkeiError(
      lockLost ? "LOCK_LOST" : "RESTORE_FAILED",
      `the restore failed and was rolled back: ${line ? `line ${line}: ` : ""}${message}`,
      { cause: error },
    );
  } finally {
    if (!lost) conn!?.release();
    await sql.end({ timeout: lost ? 0 : 5 }).catch(() => {});
  }
}

const decoder = new TextDecoder();
/** Statements (or bytes of them) sent before their answers are waited for. */
const PIPELINE = 64;
const PIPELINE_BYTES = 4 << 20;

/** What the file may not change: the guard, role settings, databases, event triggers. Read after the prologue. */
async function watched(conn: postgres.ReservedSql, id: string) {
  const [row] = await conn.unsafe<
    { guard: string | null; catalog: string; events: string; members: string; defaults: string; extensions: string }[]
  >(`
    select (select p.oid::text || ':' || pg_catalog.md5(p.prosrc || p.prosecdef::text
                     || coalesce(p.proconfig::text, '') || p.prolang::text || p.proowner::text)
              from pg_catalog.pg_proc p
             where p.proname = 'shinkei_guard_${id}' and p.pronamespace = pg_catalog.pg_my_temp_schema()) as guard,
           pg_catalog.json_build_object(
             'role', (select r.oid::text from pg_catalog.pg_roles r where r.rolname = current_user),
             'superuser', (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user),
             'database', (select d.oid::text from pg_catalog.pg_database d
                           where d.datname = pg_catalog.current_database()),
             'databases', (select pg_catalog.json_object_agg(d.oid::text, pg_catalog.json_build_array(d.datdba::text,
                             d.datname, d.datacl::text, d.datconnlimit, d.datallowconn, d.datistemplate))
                             from pg_catalog.pg_database d),
             'versions', (select pg_catalog.json_object_agg(d.oid::text, d.xmin::text) from pg_catalog.pg_database d),
             'settings', (select coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(s.setdatabase::text,
                            s.setrole::text, s.setconfig::text) order by s.setdatabase, s.setrole), '[]')
                            from pg_catalog.pg_db_role_setting s))::text as catalog,
           (select coalesce(pg_catalog.string_agg(evtname::text, '/' order by evtname), '')
              from pg_catalog.pg_event_trigger) as events,
           (select coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(a.defaclrole::text,
                     a.defaclnamespace::text, a.defaclobjtype::text, a.defaclacl::text)
                     order by a.defaclrole, a.defaclnamespace, a.defaclobjtype), '[]')::text
              from pg_catalog.pg_default_acl a left join pg_catalog.pg_namespace n on n.oid = a.defaclnamespace
             where a.defaclnamespace = 0::oid or not (${ownSchema("n")})) as defaults,
           (select coalesce(pg_catalog.string_agg(${MEMBER}, ',' order by ${MEMBER}), '')
              from pg_catalog.pg_depend d
             where ${IS_MEMBER}) as members,
           (select coalesce(pg_catalog.string_agg(pg_catalog.concat_ws(':', e.oid, e.extname, n.nspname,
                     e.extversion, e.extowner), ',' order by e.oid), '')
              from pg_catalog.pg_extension e join pg_catalog.pg_namespace n on n.oid = e.extnamespace
             where not (${ownSchema("n")})) as extensions`);
  if (!row!.guard) throw new ShinkeiError("RESTORE_FAILED", "the restore's guard could not be set up");
  return {
    guard: row!.guard,
    catalog: JSON.parse(row!.catalog) as WatchedCatalog,
    events: row!.events ? row!.events.split("/") : [],
    // What of the database lies outside its own schemas, which a restore neither drops nor brings
    // back: default privileges not tied to one of them (database-wide, or IN SCHEMA pg_catalog) and
    // extensions installed in pg_catalog (as oid:name:schema:version:owner). Changed by a file, they
    // would outlive it, and every restore after it (its undo included): a grant to PUBLIC on every
    // table made later, or an extension whose objects break the next restore of a stock dump.
    outside: { defaults: row!.defaults, extensions: row!.extensions ? row!.extensions.split(",") : [] },
    /** Every extension's members, as extension:classid:objid:objsubid. */
    members: row!.members ? row!.members.split(",") : [],
  };
}

/*
 * An extension's members are its own (the checks after the load pass over them, and tables.ts does
 * not count them), so only what CREATE EXTENSION made may be one. Written with pg_catalog's operators
 * by name: the query after a CREATE EXTENSION runs on the file's search path, mid-load.
 */
const MEMBER = "pg_catalog.concat_ws(':', d.refobjid, d.classid, d.objid, d.objsubid)";
const IS_MEMBER =
  "d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid " +
  `and d.deptype OPERATOR(pg_catalog.=) 'e'::pg_catalog."char"`;

/**
 * What the file's own CREATE EXTENSION statements made (each runs alone, between two looks at
 * pg_extension): the extensions new after it (CASCADE makes several) and their members. With what
 * was there before the load, that is all a load may leave of extensions: an object the file's code
 * adds to one (ALTER EXTENSION ... ADD, from a function), or an extension its code creates, is not.
 */
function madeByStatements(before: string[]) {
  const members = new Set(before);
  const made = new Set<string>();
  return {
    members,
    made,
    async note(conn: postgres.ReservedSql, present: Set<string>) {
      const rows = await conn.unsafe<{ ext: string; m: string }[]>(
        `select d.refobjid::pg_catalog.text as ext, ${MEMBER} as m from pg_catalog.pg_depend d where ${IS_MEMBER}`,
        [],
        { simple: false } as postgres.UnsafeQueryOptions,
      );
      for (const { ext, m } of rows) if (!present.has(ext)) members.add(m);
      for (const ext of await extensionOids(conn)) if (!present.has(ext)) made.add(ext);
    },
  };
}

/** The extensions there now, by oid. */
async function extensionOids(conn: postgres.ReservedSql): Promise<Set<string>> {
  const rows = await conn.unsafe<{ oid: string }[]>(
    "select e.oid::pg_catalog.text as oid from pg_catalog.pg_extension e",
  );
  return new Set(rows.map((r) => r.oid));
}

/** The server-wide catalog a load watches: databases by oid ([owner, ...the rest]), role settings. */
export type WatchedCatalog = {
  role: string;
  superuser: boolean;
  database: string;
  databases: Record<string, [string, ...unknown[]]>;
  /** Each database row's version (xmin): the same in place, new for any transaction's update. */
  versions?: Record<string, string>;
  settings: [string, string, string][];
};

/**
 * What DROP DATABASE (PostgreSQL 15.4 and later) writes in place into the row of the database it
 * is dropping, before it removes its files and then the row: seen by every session meanwhile,
 * for as long as the drop takes (a checkpoint, the files). ALTER DATABASE refuses the value.
 */
const DROPPING = -2;

/**
 * What of the server-wide catalog differs after the load, of what the load could change: a
 * superuser's load, anything; any other role's, its own database, the databases it owns (before or
 * after) and the settings of itself or of those databases. The rest is other clients' on a shared
 * server, and must not fail the restore. A database there before and not after, or after and not
 * before, was dropped or created by another client: neither can run inside a transaction block;
 * nor can a drop still under way, whose row is marked in place (DROPPING).
 */
export function catalogChanged(before: WatchedCatalog, after: WatchedCatalog): "databases" | "settings" | null {
  const ours = new Set<string>([before.database]);
  for (const side of [before, after])
    for (const [oid, [owner]] of Object.entries(side.databases)) if (owner === before.role) ours.add(oid);
  const mine = (oid: string) => before.superuser || ours.has(oid);
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  // A row another session is dropping: changed in place (the same version as before), which no
  // transaction's update does, the load's included; it goes when that drop commits.
  const dropping = (oid: string) =>
    after.databases[oid]![3] === DROPPING &&
    before.versions?.[oid] !== undefined &&
    before.versions[oid] === after.versions?.[oid];
  for (const [oid, was] of Object.entries(before.databases))
    if (mine(oid) && oid in after.databases && !same(was, after.databases[oid]) && !dropping(oid)) return "databases";
  const settings = (c: WatchedCatalog) =>
    c.settings
      .filter(([db, role]) => before.superuser || role === before.role || ours.has(db))
      .map((s) => JSON.stringify(s))
      .sort();
  return same(settings(before), settings(after)) ? null : "settings";
}

/** Each COPY target's oid (or null: gone), in the order of judged.copied, on the file's search_path. */
async function resolveTargets(conn: postgres.ReservedSql, judged: Judged): Promise<(string | null)[]> {
  const names = [...judged.copied.values()].map((t) =>
    t.schema === "*" ? quoteIdent(t.name) : `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`,
  );
  if (names.length === 0) return [];
  const rows = await conn.unsafe<{ oid: string | null }[]>(
    names
      .map((name, i) => `select ${i} as i, pg_catalog.to_regclass('${name.replaceAll("'", "''")}')::oid::text as oid`)
      .join(" union all ") + " order by 1",
  );
  return rows.map((r) => r.oid);
}

/**
 * Success is claimed only when checked, in the restore's own transaction before COMMIT: the guard
 * is the one the prologue made (same oid, same body, its trigger on, its row there), role
 * settings and every database's name, owner, privileges and connection settings are as they
 * were, no role was written, every table a COPY filled holds exactly the rows sent, and nothing
 * the file did not define (relations, functions, triggers, event triggers) appeared. Code the file
 * defines (a trigger, a default) runs during the load: this is what catches its side effects.
 * Deferred constraints have fired before (apply), and the checks run with only pg_catalog on the
 * search path, so no code of the file's runs in them (an operator of its own matching better).
 */
async function checkLoaded(
  conn: postgres.ReservedSql,
  id: string,
  before: Awaited<ReturnType<typeof watched>>,
  judged: Judged,
  oids: (string | null)[],
  serverVersionNum: number,
  extensions: ReturnType<typeof madeByStatements>,
): Promise<Record<string, number>> {
  const fail = (what: string): never => {
    throw new ShinkeiError("RESTORE_FAILED", `the restore was rolled back: ${what}`, {
      hint: "Nothing in the database was changed: the check runs before the restore commits.",
    });
  };
  // Every table's count (what the restore reports, so it is not counted twice), then each COPY
  // target against the rows sent. Row security off: a policy is code the file wrote, and would run
  // inside the count (and decide what it sees); with it off, a table a policy covers is an error.
  await conn.unsafe("SET LOCAL row_security = off");
  const targets = [...judged.copied.values()];
  // Run with only pg_catalog on the search path (apply sets it before the deferred constraints).
  const resolved =
    targets.length === 0
      ? []
      : await conn.unsafe<{ q: string | null; schema: string; name: string; own: boolean }[]>(
          oids
            .map(
              (oid, i) =>
                `select ${i} as i, pg_catalog.quote_ident(n.nspname::text) || '.' ||
                   pg_catalog.quote_ident(c.relname::text) as q, n.nspname as schema, c.relname as name,
            c.relkind = 'r' and exists (select 1 from pg_catalog.pg_inherits h where h.inhparent = c.oid) as own
       from (select ${oid === null ? "null" : `${Number(oid)}`}::oid as r) t
       left join pg_catalog.pg_class c on c.oid = t.r
       left join pg_catalog.pg_namespace n on n.oid = c.relnamespace`,
            )
            .join(" union all ") + " order by i",
        );
  const counts = await tableCounts(conn);
  const direct: string[] = [];
  const found = resolved.map((r, i) => {
    const t = targets[i]!;
    if (!r.q) fail(`the table ${t.schema === "*" ? "" : `${t.schema}.`}${t.name} that a COPY filled is gone`);
    const key = r.schema === "public" ? r.name : `${r.schema}.${r.name}`;
    // An inheritance parent's count includes its children's rows, and an extension's table is not
    // among the counted: these are counted on their own.
    if (r.own || counts[key] === undefined)
      direct.push(`select ${i} as i, count(*)::int8 as n from ${r.own ? "only " : ""}${r.q}`);
    return { key, n: counts[key] };
  });
  if (direct.length > 0)
    for (const { i, n } of await conn.unsafe<{ i: number; n: string }[]>(direct.join(" union all ")))
      found[i]!.n = Number(n);
  found.forEach(({ key, n }, i) => {
    if (n !== targets[i]!.rows) fail(`${key} holds ${n} rows, the file sent ${targets[i]!.rows}`);
  });

  // The catalog last: nothing of the file's runs after these checks.
  const after = await watched(conn, id).catch(() => fail("the restore's guard was removed during the load"));
  if (after.guard !== before.guard) fail("the restore's guard was replaced during the load");
  const [intact] = await conn
    .unsafe<{ ok: boolean }[]>(`
    select exists (select 1 from pg_catalog.pg_trigger t
                    where t.tgrelid = 'pg_temp.shinkei_guard_${id}'::regclass::oid and t.tgname = 'shinkei_guard'
                     and t.tgenabled = 'A' and t.tgfoid = ${Number(before.guard.split(":")[0])}::oid)
       and (select count(*) from pg_temp.shinkei_guard_${id}) = 1 as ok`)
    .catch(() => [{ ok: false }]);
  if (!intact!.ok) fail("the restore's guard was altered during the load");
  const changed = catalogChanged(before.catalog, after.catalog);
  if (changed === "settings") fail("role or database settings changed during the load (pg_db_role_setting)");
  if (changed === "databases")
    fail("a database's name, owner, privileges or connection settings changed during the load (pg_database)");
  // Roles are not in the watched catalog (only a superuser reads pg_authid), but a write to them
  // takes a lock this transaction keeps to its end: the file's code changed a password or expiry
  // (ALTER ROLE current_user, as the owner it acts as may), or a membership.
  const [roles] = await conn.unsafe<{ changed: string | null }[]>(`
    select pg_catalog.string_agg(c.relname::text, ', ' order by c.relname) as changed
      from pg_catalog.pg_locks l join pg_catalog.pg_class c on c.oid = l.relation
     where l.pid = pg_catalog.pg_backend_pid() and l.mode = 'RowExclusiveLock'
       and l.relation in ('pg_catalog.pg_authid'::regclass::oid, 'pg_catalog.pg_auth_members'::regclass::oid)`);
  if (roles?.changed) fail(`a role's password, expiry or memberships changed during the load (${roles.changed})`);
  if (after.outside.defaults !== before.outside.defaults)
    fail(
      "default privileges outside the database's own schemas changed during the load (pg_default_acl): " +
        "they would outlive it and every later restore. A stock dump holds them as ALTER DEFAULT PRIVILEGES " +
        "without IN SCHEMA: dump with --no-privileges, or leave those lines out",
    );
  // Those the file's statements made (a dump of a database with hstore in pg_catalog) are its own.
  const madeHere = (e: string) => extensions.made.has(e.split(":")[0]!);
  const outside = new Set(before.outside.extensions);
  if (
    after.outside.extensions.some((e) => !outside.has(e) && !madeHere(e)) ||
    before.outside.extensions.some((e) => !after.outside.extensions.includes(e))
  )
    fail("extensions outside the database's own schemas changed during the load (pg_extension)");
  // Objects the checks below pass over as an extension's own: only what CREATE EXTENSION made counts as
  // such, not an object the file's code made and then added to one (ALTER EXTENSION ... ADD).
  const added = after.members.filter((m) => !extensions.members.has(m));
  if (added.length) {
    const [e, c, o, sub] = added[0]!.split(":").map(Number);
    const [d] = await conn.unsafe<{ what: string | null; ext: string | null }[]>(
      `select pg_catalog.pg_describe_object(${c}::oid, ${o}::oid, ${sub}::int4) as what,
              (select x.extname::text from pg_catalog.pg_extension x where x.oid = ${e}::oid) as ext`,
    );
    fail(
      `${added.length} object(s) were added to an extension during the load, not made by its CREATE EXTENSION ` +
        `(${d?.what ?? "an object"} in ${d?.ext ?? "an extension"})`,
    );
  }
  const newEvents = after.events.filter((e) => !before.events.includes(e) && !judged.eventTriggers.has(e));
  if (newEvents.length) fail(`event triggers the file does not define appeared: ${newEvents.join(", ")}`);

  const defined = (set: Set<string>, schema: string, name: string) =>
    set.has(`${schema}.${name}`) || set.has(`*.${name}`);
  const userSchema = ownSchema("n");
  const rels = await conn.unsafe<{ schema: string; name: string; owned: boolean }[]>(`
    select n.nspname as schema, c.relname as name,
           exists (select 1 from pg_catalog.pg_depend d
                    where d.classid = 'pg_catalog.pg_class'::regclass::oid and d.objid = c.oid
                      and d.refclassid = 'pg_catalog.pg_class'::regclass::oid and d.deptype in ('i', 'a')
                      and c.relkind = 'S') as owned
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') and ${userSchema}
       and not exists (select 1 from pg_catalog.pg_depend d
                        where d.classid = 'pg_catalog.pg_class'::regclass::oid and d.objid = c.oid
                          and d.deptype = 'e')`);
  const extraRels = rels.filter((r) => !r.owned && !defined(judged.relations, r.schema, r.name));
  if (extraRels.length)
    fail(
      `relations the file does not define appeared: ${extraRels
        .slice(0, 5)
        .map((r) => `${r.schema}.${r.name}`)
        .join(", ")}`,
    );
  const funcs = await conn.unsafe<{ schema: string; name: string }[]>(`
    select n.nspname as schema, p.proname as name
      from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where ${userSchema}
       and not exists (select 1 from pg_catalog.pg_depend d
                        where d.classid = 'pg_catalog.pg_proc'::regclass::oid and d.objid = p.oid
                          and d.deptype in ('e', 'i'))`);
  const extraFuncs = funcs.filter((f) => !defined(judged.functions, f.schema, f.name));
  if (extraFuncs.length)
    fail(
      `functions the file does not define appeared: ${extraFuncs
        .slice(0, 5)
        .map((f) => `${f.schema}.${f.name}`)
        .join(", ")}`,
    );
  const trigs = await conn.unsafe<{ rel: string; name: string }[]>(`
    select c.relname as rel, t.tgname as name
      from pg_catalog.pg_trigger t join pg_catalog.pg_class c on c.oid = t.tgrelid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where not t.tgisinternal and ${userSchema}${serverVersionNum >= 130000 ? " and t.tgparentid = 0::oid" : ""}`);
  const extraTrigs = trigs.filter((t) => !judged.triggers.has(`${t.rel}/${t.name}`));
  if (extraTrigs.length)
    fail(
      `triggers the file does not define appeared: ${extraTrigs
        .slice(0, 5)
        .map((t) => `${t.name} on ${t.rel}`)
        .join(", ")}`,
    );

  return counts;
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** What a caller lets through that this host would otherwise refuse (--allow-unencrypted, --allow-unsigned). */
export type Allowances = { unencrypted?: boolean; unsigned?: boolean; superuser?: boolean };

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
    throw new ShinkeiError(
      "UNSIGNED_BACKUP",
      `${v.file} has no manifest, and BACKUP_MANIFEST_KEY is set: nothing shows that shinkei wrote it`,
      {
        hint:
          "Nothing was changed. If you know where this file comes from, pass --allow-unsigned (its row " +
          "counts are then not compared).",
      },
    );
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
    const changed = [...new Set([...Object.keys(before.counts), ...Object.keys(after.counts)])].filter(
      (t) =>
        before.counts[t] !== after.counts[t] ||
        (before.digests[t] !== undefined && before.digests[t] !== after.digests[t]),
    );
    hint =
      changed.length === 0
        ? "Checked: every table's row count and content digest are as they were before the restore. Nothing " +
          "in the database was changed."
        : `PostgreSQL rolled the restore back, but ${changed.join(", ")} differ from before it: other ` +
          `clients wrote meanwhile? Compare with shinkei status.`;
  } catch (e) {
    hint =
      `PostgreSQL rolls a failed transaction back, but checking the database afterwards ` +
      `failed: ${(e as Error).message}`;
  }
  return new ShinkeiError(error.code, error.message, { hint, cause: error.cause, details: error.details });
}

/**
 * Verify, take and verify a safety backup, load in one transaction, compare counts. The caller
 * holds the maintenance lock and passes its handle, so the load commits only while it is held.
 * Without a safety backup, a file with a manifest is read once: that read is hashed, decrypted,
 * decompressed and judged into the spool together, and its SHA-256 is checked against the
 * manifest before anything of the file runs (the load then reads the spool). With one, the
 * checksum comes first, so a damaged file stops us before the safety backup is taken.
 * The judge only reads the file, so it runs while the server answers (the role to load as, the
 * state before) or pg_dump takes the safety backup, not after them.
 */
export async function restoreBackup(options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const { sql, url, path, env, age } = options;
  options.onStep?.("verify");
  let verification = options.verification ?? (await verifyBackup(path, { quick: true, defer: true, env, age }));
  const oneRead = verification.pending && !options.safetyBackup;
  if (verification.pending && !oneRead) verification = await verifyBackup(path, { quick: true, env, age });
  assertVerified(verification);
  refuseUntrusted(verification, age, options.allow);
  // A live database with no safe role to load the file as is refused first: before the safety
  // backup, and before anything the judge finds (its error would hide this one).
  const role = { allowSuperuser: options.allow?.superuser };
  const planned = planLoadRole(url, role);
  planned.catch(() => {}); // awaited below
  if (options.safetyBackup) await planned;

  // Open (decrypt) first: a missing or wrong key must stop us before the safety backup and the load.
  const encryption = verification.manifest?.encryption;
  const read = oneRead ? checkedRead(path, verification) : undefined;
  const source = await (read
    ? plainOf(read.stream, path, verification.format, age, encryption)
    : content(path, verification.format, age, encryption)
  ).catch(async (error) => {
    await planned;
    throw error;
  });
  // The spool goes beside the backups, not to the temp directory (a decoded dump can be larger):
  // the safety backup would make BACKUP_DIR, but only once the judge has begun (and says why it cannot).
  if (options.safetyBackup && options.dir) await mkdir(options.dir, { recursive: true, mode: 0o700 }).catch(() => {});
  const stopJudge = new AbortController();
  const judging = judgeFile(url, source, verification.format, { env, spoolDir: options.dir, signal: stopJudge.signal });
  judging.catch(() => {}); // awaited below
  // However the restore ends, the spool goes; leaving before the judge is done stops it first.
  const dropSpool = () => {
    stopJudge.abort();
    return judging.then(
      (f) => f.spool.remove(),
      () => {},
    );
  };

  let safety: BackupResult | undefined;
  let before: Promise<TableStats>;
  try {
    await planned;
    if (options.safetyBackup) {
      options.onStep?.("safety-backup");
      safety = await takeSafetyBackup({ sql, url, dir: options.dir, reason: "pre-restore", env, age });
      before = Promise.resolve({ counts: safety.manifest.counts, digests: safety.manifest.digests ?? {} });
    } else {
      // Read by the server while the file is judged here.
      before = sql.begin((tx) => tableStats(tx));
      before.catch(() => {}); // awaited below
    }
  } catch (error) {
    await dropSpool();
    throw error;
  }

  let counts: Record<string, number>;
  try {
    options.onStep?.("restore");
    let file: JudgedFile;
    try {
      file = await judging;
    } catch (error) {
      // An altered file fails here as anything (a gzip error, a refused statement): the checksum
      // says what happened, so it is taken again and speaks first.
      if (read) assertVerified(await verifyBackup(path, { quick: true, env, age }));
      throw error;
    }
    if (read) verification = read.check();
    await before;
    // Judged (and its checksum checked) first, so a refused file makes no role either.
    const as = await loadRole(url, role);
    try {
      ({ counts } = await apply(as.url, file, { lock: options.lock }));
    } catch (error) {
      await releaseLoadRole(as);
      throw error;
    }
    await releaseLoadRole(as);
  } catch (error) {
    // Nothing was sent for a file whose checksum is wrong: its own hint says what to do.
    if (error instanceof ShinkeiError && error.code === "BACKUP_CORRUPT") throw error;
    throw await checkedRollback(sql, await before, error);
  } finally {
    await dropSpool();
  }

  // Counted by the load, in its own transaction before COMMIT (what was committed).
  options.onStep?.("compare");
  const mismatches: string[] = [];
  for (const [table, expected] of Object.entries(verification.manifest?.counts ?? {})) {
    if (counts[table] !== expected)
      mismatches.push(`${table}: expected ${expected}, found ${counts[table] ?? "no table"}`);
  }
  return { verification, safety, counts, mismatches, durationMs: Math.round(performance.now() - started) };
}
