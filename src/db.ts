import postgres from "postgres";
import { ShinkeiError } from "./errors.ts";

export type Sql = postgres.Sql;
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

export function connect(url: string, options: { max?: number } = {}): Sql {
  return postgres(url, {
    max: options.max ?? 10,
    connect_timeout: 5,
    idle_timeout: 30,
    onnotice: () => {},
    // count(*) and pg_database_size are bigint; postgres.js hands them back as strings otherwise.
    types: { int8: { to: 20, from: [20], serialize: (n: number) => String(n), parse: (s: string) => Number(s) } },
  });
}

/** Turn a driver failure into one line a person can act on; anything else passes through unchanged. */
export function explainDbError(error: unknown, url: string): unknown {
  if (error instanceof ShinkeiError) return error;
  const t = describeTarget(url);
  const e = error as { code?: string; message?: string };
  const network = ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "CONNECT_TIMEOUT", "ECONNRESET", "EHOSTUNREACH", "ConnectionRefused"];
  if (e?.code && network.includes(e.code)) {
    return new ShinkeiError("DB_UNREACHABLE", `cannot reach PostgreSQL at ${t.host}:${t.port} (${e.code})`, {
      hint: "Start it (docker compose up -d postgres) or point DATABASE_URL at a running server.",
      cause: error,
    });
  }
  if (e?.code === "3D000") {
    return new ShinkeiError("DB_UNREACHABLE", `database "${t.database}" does not exist on ${t.host}:${t.port}`, {
      hint: "Run `shinkei migrate` to create it, or fix DATABASE_URL.",
      cause: error,
    });
  }
  if (e?.code === "28P01" || e?.code === "28000") {
    return new ShinkeiError("DB_UNREACHABLE", `PostgreSQL at ${t.host}:${t.port} refused user "${t.user}": ${e.message}`, {
      hint: "Check the user and password in DATABASE_URL.",
      cause: error,
    });
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
        // Another process created it between our check and now (42P04, or 23505 mid-race): fine.
        if (!["42P04", "23505"].includes((e as { code?: string }).code ?? "")) throw e;
        return false;
      }
      return true;
    });
  } finally {
    await sql.end({ timeout: 5 });
  }
}

const LOCK_NAMESPACE = 0x5348; // "SH": keeps our advisory locks apart from the application's

/**
 * Hold a session-level advisory lock named `name` on this database while `fn` runs. Without
 * `wait`, a held lock is a LOCKED error naming what holds it; with it, we queue behind the holder.
 */
export async function withAdvisoryLock<T>(
  sql: Sql,
  name: string,
  fn: () => Promise<T>,
  options: { wait?: boolean; what?: string } = {},
): Promise<T> {
  const conn = await sql.reserve();
  try {
    if (options.wait) {
      await conn`select pg_advisory_lock(${LOCK_NAMESPACE}, hashtext(${name}))`;
    } else {
      const [row] = await conn`select pg_try_advisory_lock(${LOCK_NAMESPACE}, hashtext(${name})) as ok`;
      if (!row!.ok) {
        throw new ShinkeiError("LOCKED", `another ${options.what ?? name} is running on this database`, {
          hint: "Wait for it to finish, or pass --wait to queue behind it.",
        });
      }
    }
    try {
      return await fn();
    } finally {
      await conn`select pg_advisory_unlock(${LOCK_NAMESPACE}, hashtext(${name}))`.catch(() => {});
    }
  } finally {
    conn.release();
  }
}

/**
 * Drop and recreate `public` with the server's stock owner and grants. Used inside a transaction
 * by restore and reset, so an emptied schema is never seen by anyone.
 */
export function recreatePublicSchema(serverVersionNum: number): string {
  const create = serverVersionNum >= 150000
    ? "CREATE SCHEMA public AUTHORIZATION pg_database_owner;\nGRANT USAGE ON SCHEMA public TO PUBLIC;"
    : "CREATE SCHEMA public;\nGRANT ALL ON SCHEMA public TO PUBLIC;";
  return `DROP SCHEMA IF EXISTS public CASCADE;\n${create}\n`;
}
