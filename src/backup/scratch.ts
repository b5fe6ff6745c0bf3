import postgres from "postgres";
import { ShinkeiError } from "../errors.ts";

/** The same server as `serverUrl`, database `database`. */
export function onServer(serverUrl: string, database: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${database}`;
  return u.toString();
}

/** `_` and `%` are LIKE wildcards: escaped, a prefix matches only names that really start with it. */
export const likePrefix = (prefix: string) => prefix.replace(/[\\_%]/g, (c) => `\\${c}`) + "%";

export type ScratchOptions = {
  serverUrl: string;
  /** Every scratch database of one kind starts with this; leftovers with it are dropped first. */
  prefix: string;
  /** What needs the scratch database, for error messages ("the drill", "recover"). */
  what: string;
  /** Without it, a second user of the same prefix fails with LOCKED instead of queueing. */
  wait?: boolean;
  /** What to do about a missing CREATEDB privilege, where the caller offers a choice of server. */
  privilegeHint?: string;
  /** Called with a function that drops the scratch database: signal handlers use it. */
  onScratch?: (drop: () => Promise<void>) => void;
};

/**
 * Run `fn` with a new, empty database on the server, then drop it whatever happened. One holder per
 * prefix and server at a time (an advisory lock on the server's `postgres` database): so scratch
 * databases left by a killed run (SIGKILL) can be dropped first without touching a live one.
 */
export async function withScratchDatabase<T>(options: ScratchOptions, fn: (url: string, name: string) => Promise<T>): Promise<T> {
  const { serverUrl, prefix } = options;
  const host = new URL(serverUrl);
  const server = `${host.hostname}:${host.port || 5432}`;
  const admin = postgres(onServer(serverUrl, "postgres"), { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    const lock = await admin.reserve();
    try {
      if (options.wait ?? true) await lock`select pg_advisory_lock(${0x5348}, hashtext(${prefix}))`;
      else {
        const [row] = await lock`select pg_try_advisory_lock(${0x5348}, hashtext(${prefix})) as ok`;
        if (!row!.ok) throw new ShinkeiError("LOCKED", `another ${options.what} is running on ${server}`, { hint: "Wait for it to finish, then run this again." });
      }
      try {
        for (const { datname } of await lock`select datname from pg_database where datname like ${likePrefix(prefix)}`) {
          await lock`drop database if exists ${lock(datname)} with (force)`;
        }
        const scratch = `${prefix}${Date.now().toString(36)}_${crypto.randomUUID().slice(0, 8)}`;
        try {
          await lock`create database ${lock(scratch)}`;
        } catch (e) {
          if ((e as { code?: string }).code === "42501") {
            throw new ShinkeiError("REFUSED", `${options.what} needs the CREATEDB privilege on ${server} to make a scratch database`, {
              hint: options.privilegeHint ?? "Grant it: ALTER ROLE ... CREATEDB.",
            });
          }
          throw e;
        }
        const drop = async () => {
          await lock`drop database if exists ${lock(scratch)} with (force)`.catch(() => {});
        };
        options.onScratch?.(drop);
        try {
          return await fn(onServer(serverUrl, scratch), scratch);
        } finally {
          await drop();
        }
      } finally {
        await lock`select pg_advisory_unlock(${0x5348}, hashtext(${prefix}))`.catch(() => {});
      }
    } finally {
      lock.release();
    }
  } finally {
    await admin.end({ timeout: 5 });
  }
}

/** `load` writes SQL for the server it loads into: ask that server its version. */
export async function serverVersionNum(url: string): Promise<number> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    const [v] = await sql<{ num: number }[]>`select current_setting('server_version_num')::int as num`;
    return v!.num;
  } finally {
    await sql.end({ timeout: 5 });
  }
}
