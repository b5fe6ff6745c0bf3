import postgres from "postgres";
import { LOGIN_SEARCH_PATH, onServer, PG, withAdvisoryLock } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { loadRole, type LoadRole } from "./loadrole.ts";

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
 *
 * A scratch database receives a file that is not trusted, whose code (a trigger, a default, a cast)
 * may run on any later read or write, not only during the load. So `fn` gets a URL that logs in as
 * the scratch's own role (loadrole.ts: DATABASE_URL's role when it cannot reach the server's OS,
 * else a temporary role that owns the database), and everything on the scratch goes through it:
 * the load, and whatever reads or migrates it afterwards. No one else may connect (CONNECT is
 * revoked from PUBLIC), and at the end the database is dropped before its role, so nothing the file
 * made is ever handed to a superuser.
 */
export async function withScratchDatabase<T>(
  options: ScratchOptions,
  fn: (url: string, name: string) => Promise<T>,
): Promise<T> {
  const { serverUrl, prefix } = options;
  const host = new URL(serverUrl);
  const server = `${host.hostname}:${host.port || 5432}`;
  const admin = postgres(onServer(serverUrl, "postgres"), {
    max: 1,
    onnotice: () => {},
    connect_timeout: 5,
    connection: LOGIN_SEARCH_PATH,
  });
  try {
    return await withAdvisoryLock(
      admin,
      `scratch:${prefix}`,
      async () => {
        const leftovers = await admin`select datname from pg_catalog.pg_database
          where pg_catalog.starts_with(datname::text, ${prefix}::text)`;
        for (const { datname } of leftovers)
          if (isScratchName(datname, prefix)) await admin`drop database if exists ${admin(datname)} with (force)`;
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
        let role: LoadRole | undefined;
        const drop = async () => {
          await admin`drop database if exists ${admin(scratch)} with (force)`.catch(() => {});
          // Then the role, which owned what the file made: that went with the database.
          await role?.release().catch(() => {});
        };
        options.onScratch?.(drop);
        try {
          // A new database's default ACL lets PUBLIC connect: any role on the server could then call
          // the file's functions while the scratch exists.
          await admin`revoke all on database ${admin(scratch)} from public`;
          role = await loadRole(onServer(serverUrl, scratch), { scratch: true });
          return await fn(role.url, scratch);
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
