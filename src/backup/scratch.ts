import postgres from "postgres";
import { PG, withAdvisoryLock } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";

/** The same server as `serverUrl`, database `database`. */
export function onServer(serverUrl: string, database: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * Whether `name` is a scratch database made with `prefix` (the prefix, its creation time in base
 * 36, 8 hex digits), for cleaning up after a killed run. Not LIKE: `_` is a wildcard there, and
 * `shinkei_drill_%` also matches `shinkeiXdrillXsales`. The time must be a real past moment, so a
 * database someone named `shinkei_drill_reports_1a2b3c4d` is not taken for ours either.
 */
export function isScratchName(name: string, prefix: string, now = Date.now()): boolean {
  if (!name.startsWith(prefix)) return false;
  const m = /^([0-9a-z]{1,12})_[0-9a-f]{8}$/.exec(name.slice(prefix.length));
  const made = m ? parseInt(m[1]!, 36) : NaN;
  return made > Date.UTC(2024, 0, 1) && made <= now + 86_400_000;
}

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
 * prefix and server at a time (an advisory lock on the server's `postgres` database, naming its
 * holder): so scratch databases left by a killed run (SIGKILL) are dropped first, and never a live one.
 */
export async function withScratchDatabase<T>(
  options: ScratchOptions,
  fn: (url: string, name: string) => Promise<T>,
): Promise<T> {
  const { serverUrl, prefix } = options;
  const host = new URL(serverUrl);
  const server = `${host.hostname}:${host.port || 5432}`;
  const admin = postgres(onServer(serverUrl, "postgres"), { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    return await withAdvisoryLock(
      admin,
      `scratch:${prefix}`,
      async () => {
        for (const { datname } of await admin`select datname from pg_database where starts_with(datname, ${prefix})`) {
          if (isScratchName(datname, prefix)) await admin`drop database if exists ${admin(datname)} with (force)`;
        }
        const scratch = `${prefix}${Date.now().toString(36)}_${crypto.randomUUID().slice(0, 8)}`;
        try {
          await admin`create database ${admin(scratch)}`;
        } catch (e) {
          if ((e as { code?: string }).code === PG.INSUFFICIENT_PRIVILEGE) {
            throw new ShinkeiError(
              "PRIVILEGE_MISSING",
              `${options.what} needs the CREATEDB privilege on ${server} to make a scratch database`,
              {
                hint: options.privilegeHint ?? "Grant it: ALTER ROLE ... CREATEDB.",
              },
            );
          }
          throw e;
        }
        const drop = async () => {
          await admin`drop database if exists ${admin(scratch)} with (force)`.catch(() => {});
        };
        options.onScratch?.(drop);
        try {
          return await fn(onServer(serverUrl, scratch), scratch);
        } finally {
          await drop();
        }
      },
      { wait: options.wait ?? true, what: options.what },
    );
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
