import postgres from "postgres";
import { ShinkeiError } from "../errors.ts";

export type Sql = postgres.Sql;

/** The PostgreSQL error codes (SQLSTATE) the code matches on, by their names in the manual's Appendix A. */
export const PG = {
  UNIQUE_VIOLATION: "23505",
  FOREIGN_KEY_VIOLATION: "23503",
  INSUFFICIENT_PRIVILEGE: "42501",
  DUPLICATE_DATABASE: "42P04",
  INVALID_CATALOG_NAME: "3D000", // the database does not exist
  INVALID_PASSWORD: "28P01",
  INVALID_AUTHORIZATION_SPECIFICATION: "28000",
} as const;
/** A pool or an open transaction: what read helpers need. */
export type Queryable = postgres.Sql | postgres.TransactionSql;

export type Target = { host: string; port: number; database: string; user: string };

/** Where a URL points, without its password: safe to print. */
export function describeTarget(url: string): Target {
  const u = new URL(url);
  return {
    host: u.searchParams.get("host") ?? (decodeURIComponent(u.hostname) || "localhost"),
    port: Number(u.port || 5432),
    database: decodeURIComponent(u.pathname.slice(1)),
    user: decodeURIComponent(u.username) || "postgres",
  };
}

/** The same server as `serverUrl`, database `database`. */
export function onServer(serverUrl: string, database: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * Every connection of shinkei's logs in with this: a startup setting overrides ALTER DATABASE/ROLE
 * ... SET, with which the database's owner could put public before pg_catalog (so that even a
 * look-alike of a signature pg_catalog has would win). pg_catalog is then searched first
 * (implicitly), and no schema named after the role ("$user") is searched.
 */
export const LOGIN_SEARCH_PATH = { search_path: "public" } as const;

export function connect(url: string, options: { max?: number } = {}): Sql {
  return postgres(url, {
    max: options.max ?? 10,
    connect_timeout: 5,
    idle_timeout: 30,
    // postgres.js waits up to 20 s between reconnects after failures (3^n/100 s), holding every
    // query in the pool that long: while the server is down a request would wait 20 s for its 503.
    // At most ~1 s instead: a down server is told at once, and a returning one is found within a second.
    backoff: (retries: number) => (0.5 + Math.random() / 2) * Math.min(0.05 * 2 ** retries, 1),
    onnotice: () => {},
    connection: LOGIN_SEARCH_PATH,
    // count(*) and pg_database_size are bigint; postgres.js hands them back as strings otherwise.
    types: { int8: { to: 20, from: [20], serialize: (n: number) => String(n), parse: (s: string) => Number(s) } },
  });
}

/**
 * Whether a driver error means the connection itself is gone (reset, closed under us). postgres.js
 * on Bun never settles a query written to such a connection, so nothing more is sent on it: closing
 * it is what rolls its transaction back.
 */
export function connectionLost(error: unknown): boolean {
  const e = error as { code?: unknown; severity?: unknown };
  // FATAL: the server ends the session after sending it (57P01 when DROP DATABASE ... FORCE ends it).
  if (e?.severity === "FATAL" || e?.severity === "PANIC") return true;
  return (
    typeof e?.code === "string" &&
    ["ECONNRESET", "EPIPE", "CONNECTION_CLOSED", "CONNECTION_DESTROYED", "CONNECTION_ENDED"].includes(e.code)
  );
}

/** Wait for `p` at most `ms`: for a last query on a connection that may have died without a word. */
export function settleWithin(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: Timer | undefined;
  return Promise.race([
    p.then(
      () => {},
      () => {},
    ),
    new Promise<void>((resolve) => (timer = setTimeout(resolve, ms))),
  ]).finally(() => clearTimeout(timer));
}

/** Turn a driver failure into one line a person can act on; anything else passes through unchanged. */
export function explainDbError(error: unknown, url: string): unknown {
  if (error instanceof ShinkeiError) return error;
  const t = describeTarget(url);
  const e = error as { code?: string; message?: string };
  const network = [
    "ECONNREFUSED",
    "ENOTFOUND",
    "EAI_AGAIN",
    "ETIMEDOUT",
    "CONNECT_TIMEOUT",
    "ECONNRESET",
    "EHOSTUNREACH",
    "ConnectionRefused",
    "EPIPE",
    "CONNECTION_CLOSED",
    "CONNECTION_DESTROYED",
    "CONNECTION_ENDED",
  ];
  // The server going away: shutting down or starting (57P01-57P03), a crash of another backend
  // (57P02), a connection exception (08xxx), or no connection slot left (53300). Retrying later works.
  const goingAway =
    typeof e?.code === "string" && (/^57P0[1-5]$/.test(e.code) || /^08/.test(e.code) || e.code === "53300");
  if (e?.code && (network.includes(e.code) || goingAway)) {
    return new ShinkeiError(
      "DB_UNREACHABLE",
      `cannot reach PostgreSQL at ${t.host}:${t.port} (${e.code}${goingAway ? `: ${e.message}` : ""})`,
      {
        hint: "Start it (docker compose up -d postgres) or point DATABASE_URL at a running server.",
        cause: error,
      },
    );
  }
  if (e?.code === PG.INVALID_CATALOG_NAME) {
    return new ShinkeiError("DB_UNREACHABLE", `database "${t.database}" does not exist on ${t.host}:${t.port}`, {
      hint: "Run `shinkei migrate` to create it, or fix DATABASE_URL.",
      cause: error,
    });
  }
  if (e?.code === PG.INVALID_PASSWORD || e?.code === PG.INVALID_AUTHORIZATION_SPECIFICATION) {
    return new ShinkeiError(
      "DB_UNREACHABLE",
      `PostgreSQL at ${t.host}:${t.port} refused user "${t.user}": ${e.message}`,
      {
        hint: "Check the user and password in DATABASE_URL.",
        cause: error,
      },
    );
  }
  // The class name does not survive the compiled binary's minifier; a server error always has a severity.
  if ((error as Error)?.name === "PostgresError" || typeof (error as { severity?: unknown })?.severity === "string") {
    return new ShinkeiError("DB_ERROR", `database error: ${e.message}`, { cause: error });
  }
  return error;
}

/** Run `fn`, translating driver errors at the boundary so callers see ShinkeiErrors only. */
export async function guarded<T>(url: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw explainDbError(error, url);
  }
}

/** Create the database named in `url` when it is missing (connecting to the server's `postgres` database). */
export async function ensureDatabase(url: string): Promise<boolean> {
  const { database } = describeTarget(url);
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const sql = connect(admin.toString(), { max: 1 });
  try {
    return await guarded(url, async () => {
      const [row] = await sql`select 1 as ok from pg_database where datname = ${database}`;
      if (row) return false;
      try {
        await sql`create database ${sql(database)}`;
      } catch (e) {
        // Another process created it between our check and now: fine.
        if (!([PG.DUPLICATE_DATABASE, PG.UNIQUE_VIOLATION] as string[]).includes((e as { code?: string }).code ?? ""))
          throw e;
        return false;
      }
      return true;
    });
  } finally {
    await sql.end({ timeout: 5 });
  }
}

const LOCK_NAMESPACE = 0x5348; // "SH": keeps our advisory locks apart from the application's

/** What the work under a lock can ask of it: the holder's backend, and whether it still holds the lock. */
export type LockHandle = {
  /** A SQL boolean expression, true while the holder still holds the lock: a commit guard can check it. */
  heldCondition: string;
  /**
   * LOCK_LOST unless the lock is still held. Given a transaction, asked in it: a check right before
   * its COMMIT (checkedCommit) that fails rolls the transaction back with it.
   */
  assertHeld(q?: Queryable): Promise<void>;
};

/**
 * Hold a session-level advisory lock named `name` on this database while `fn` runs. It lives on
 * a connection of its own, named after its holder (as pgBackRest's lock file records who holds
 * it), so a LOCKED error can say what holds the lock, and a connection that dies mid-way never
 * goes back to a pool. Without `wait`, a held lock is a LOCKED error; with it, we queue.
 */
export async function withAdvisoryLock<T>(
  sql: Sql,
  name: string,
  fn: (lock: LockHandle) => Promise<T>,
  options: { wait?: boolean; what?: string } = {},
): Promise<T> {
  const holder = `shinkei ${options.what ?? name} (pid ${process.pid})`.slice(0, 63);
  let lost = false;
  const conn = postgres({
    ...(sql.options as unknown as postgres.Options<{}>),
    max: 1,
    idle_timeout: 0,
    max_lifetime: null,
    // No type lookup on connect: a connection ended during it would leave a rejection nobody awaits.
    fetch_types: false,
    // Only PostgreSQL's own functions: see the comment on the queries below.
    connection: { application_name: holder, search_path: "pg_catalog, pg_temp" },
    onclose: () => {
      lost = true;
    },
  });
  try {
    // Run as DATABASE_URL's role (often a superuser) in a database the app's role fills: every
    // function is pg_catalog's and every argument typed, so no look-alike the app defined (say
    // public.pg_try_advisory_lock(text, text), a closer match for untyped parameters) runs instead.
    const [me] = await conn<{ pid: number; key: number }[]>`
      select pg_catalog.pg_backend_pid() as pid, pg_catalog.hashtext(${name}::text) as key`;
    const { pid, key } = me!;
    if (options.wait) {
      await conn`select pg_catalog.pg_advisory_lock(${LOCK_NAMESPACE}::int4, ${key}::int4)`;
    } else {
      const [row] = await conn`select pg_catalog.pg_try_advisory_lock(${LOCK_NAMESPACE}::int4, ${key}::int4) as ok`;
      if (!row!.ok) throw await lockedError(conn, key, options.what ?? name);
    }
    // pg_locks shows a two-key advisory lock as classid = key1, objid = key2 (as an oid), objsubid = 2.
    // Exact types on both sides (oid = oid): it also runs on the command's pool and in a restore.
    const heldCondition =
      "exists (select 1 from pg_catalog.pg_locks where locktype = 'advisory' and granted " +
      `and pid = ${pid}::int4 and classid = ${LOCK_NAMESPACE}::oid and objid = (${key})::int4::oid ` +
      "and objsubid = 2::int2)";
    const handle: LockHandle = {
      heldCondition,
      async assertHeld(q = sql) {
        const [row] = lost ? [{ held: false }] : await q.unsafe<{ held: boolean }[]>(`select ${heldCondition} as held`);
        if (!row!.held) {
          throw new ShinkeiError(
            "LOCK_LOST",
            `the ${options.what ?? name} lock was lost (its connection to the database ended)`,
            {
              hint: "Another operation may have started meanwhile; check the database and run it again.",
            },
          );
        }
      },
    };
    try {
      return await fn(handle);
    } finally {
      if (!lost)
        await settleWithin(conn`select pg_catalog.pg_advisory_unlock(${LOCK_NAMESPACE}::int4, ${key}::int4)`, 5_000);
    }
  } finally {
    // Closing the connection releases the lock whatever happened above.
    await conn.end({ timeout: 1 }).catch(() => {});
  }
}

/** LOCKED, naming what holds the lock: its application name, since when, and from where. */
async function lockedError(conn: postgres.Sql, key: number, what: string): Promise<ShinkeiError> {
  const [h] = await conn<{ name: string; since: Date; client: string | null }[]>`
    select a.application_name as name, a.backend_start as since, a.client_addr::text as client
    from pg_catalog.pg_locks l join pg_catalog.pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'advisory' and l.granted and l.classid = ${LOCK_NAMESPACE}::oid
      and l.objid = ${key}::int4::oid and l.objsubid = 2::int2
      and l.database = (select oid from pg_catalog.pg_database where datname = pg_catalog.current_database())
    limit 1`.catch(() => []);
  const by = h
    ? ` (held by "${h.name || "an unnamed client"}"${h.client ? ` from ${h.client}` : ""} ` +
      `since ${h.since.toISOString()})`
    : "";
  return new ShinkeiError("LOCKED", `another ${what} is running on this database${by}`, {
    hint: "Wait for it to finish, or pass --wait to queue behind it.",
    details: h ? { holder: h.name } : undefined,
  });
}

/**
 * Inside a transaction: a role that acts for the database's owner (a member of it, as the backup
 * service's role is of the app's) creates what follows as that owner, so the app can use it
 * afterwards, whichever of them migrated, reset or restored. A superuser or the owner itself is left
 * as it is. Scoped to the transaction (set_config(..., true)), so the session's role is untouched.
 */
export const actAsDatabaseOwner = `SELECT pg_catalog.set_config('role', pg_catalog.pg_get_userbyid(d.datdba), true)
  FROM pg_catalog.pg_database d
 WHERE d.datname = pg_catalog.current_database() AND pg_catalog.pg_get_userbyid(d.datdba) <> current_user
   AND pg_catalog.pg_has_role(d.datdba, 'MEMBER')
   AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);`;

/**
 * Drop and recreate `public` with the server's stock owner and grants. Used inside a transaction
 * by restore and reset, so an emptied schema is never seen by anyone.
 */
export function recreatePublicSchema(serverVersionNum: number): string {
  const create =
    serverVersionNum >= 150000
      ? "CREATE SCHEMA public AUTHORIZATION pg_database_owner;\nGRANT USAGE ON SCHEMA public TO PUBLIC;"
      : "CREATE SCHEMA public;\nGRANT ALL ON SCHEMA public TO PUBLIC;";
  // With initdb's comment: pg_dump leaves it out as the default, so a file rarely sets it, and a
  // public schema without it dumps as COMMENT ON SCHEMA public IS '' (a restore that changed it).
  return `DROP SCHEMA IF EXISTS public CASCADE;\n${create}\nCOMMENT ON SCHEMA public IS 'standard public schema';\n`;
}
