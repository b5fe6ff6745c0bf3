import { pbkdf2Sync } from "node:crypto";
import postgres from "postgres";
import { ShinkeiError } from "../errors.ts";
import { stderrLog } from "../log.ts";
import { quoteIdent } from "../pg/tables.ts";
import { connect, describeTarget, LOGIN_SEARCH_PATH, onServer } from "../pg/db.ts";

/**
 * Who a restore's load logs in as. Code the file defines (a function its trigger or default calls)
 * runs with the load session's rights, and `SET ROLE` is no boundary for it: PostgreSQL lets a
 * session take any role its LOGIN role may, so a function body can `set_config('role', ...)` back
 * to a superuser that logged in and reach the server's programs (COPY ... TO PROGRAM, lo_export,
 * pg_read_file, a LANGUAGE C function). So the load logs in as a role that cannot reach them:
 *
 * - DATABASE_URL's own role, when it is safe (no superuser, none of the server-file roles);
 * - otherwise a temporary login role made for this load, a member of the database's owner (so it
 *   restores as the owner, as the backup service's role does), dropped afterwards;
 * - a scratch database that shinkei made (drill, recover) is handed to that temporary role for its
 *   whole life: every step on it runs as the role, and the database is dropped before the role, so
 *   nothing the file made is ever reassigned to a superuser (see scratch.ts);
 * - a live database owned by a superuser has no safe role to load as: refused, unless the caller
 *   accepts the risk for a file it trusts (`--allow-superuser`).
 */

/** Roles whose members reach the server's files or programs; a superuser reaches everything. */
const SERVER_ROLES = ["pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"];

/** SQL: why the role `oid` (an expression) can reach the server's OS, or null when it cannot. */
function dangerExpr(oid: string): string {
  const member = (role: string) => `pg_catalog.pg_has_role(${oid}, ${role}, 'MEMBER')`;
  return `(select case
     when exists (select 1 from pg_catalog.pg_roles s where s.rolsuper and ${member("s.oid")})
       then 'is or may become a superuser'
     ${SERVER_ROLES.map((r) => `when ${member(`'${r}'`)} then 'is a member of ${r}'`).join("\n     ")}
     when (select rolcreaterole from pg_catalog.pg_roles where oid = ${oid})
          and pg_catalog.current_setting('server_version_num')::int < 160000
       then 'has CREATEROLE (before PostgreSQL 16 it may grant itself ${SERVER_ROLES[0]})'
   end)`;
}

export type LoadRole = {
  /** The URL the load connects with. */
  url: string;
  /** The temporary role made for the load, if any (for messages and tests). */
  temporary?: string;
  /**
   * Drop the temporary role (after the load's connection has closed). For a scratch database, drop
   * the database first, and with it everything the file made.
   */
  release(): Promise<void>;
};

export type LoadRoleOptions = {
  /**
   * The database is a scratch one shinkei just made (empty, no CONNECT for PUBLIC): it is handed to
   * the temporary role, and release() drops it.
   */
  scratch?: boolean;
  /** Load as DATABASE_URL's role even when it can reach the server's OS and no safe role exists. */
  allowSuperuser?: boolean;
};

/** One connection for a role's setup and checks: pg_catalog first on its search path, no type lookups. */
function adminConnection(url: string) {
  return postgres(url, {
    max: 1,
    onnotice: () => {},
    connect_timeout: 10,
    fetch_types: false,
    connection: LOGIN_SEARCH_PATH,
  });
}

type Plan = { session: string; danger: string | null; owner: string; ownerDanger: string | null };

/** Who the load would run as; throws RESTORE_AS_SUPERUSER (having changed nothing) when there is no safe role. */
export async function planLoadRole(url: string, options: LoadRoleOptions = {}): Promise<Plan> {
  const admin = adminConnection(url);
  try {
    return await plan(admin, url, options);
  } finally {
    await admin.end({ timeout: 5 });
  }
}

async function plan(admin: postgres.Sql, url: string, options: LoadRoleOptions): Promise<Plan> {
  const [me] = await admin.unsafe<{ me: string; danger: string | null; owner: string; ownerDanger: string | null }[]>(`
      select session_user::text as me,
             ${dangerExpr("(select oid from pg_catalog.pg_roles where rolname = session_user)")} as danger,
             pg_catalog.pg_get_userbyid(d.datdba)::text as owner, ${dangerExpr("d.datdba")} as "ownerDanger"
        from pg_catalog.pg_database d where d.datname = pg_catalog.current_database()`);
  const { me: session, danger, owner, ownerDanger } = me!;
  if (danger && ownerDanger && !options.scratch && !options.allowSuperuser) {
    const db = describeTarget(url).database;
    throw new ShinkeiError(
      "RESTORE_AS_SUPERUSER",
      `the restore would run the file's code with the rights of ${session}, which ${danger}, ` +
        `and the database's owner ${owner} ${ownerDanger}: ` +
        "there is no role without access to the server's files and programs to load it as",
      {
        hint:
          `Nothing was changed. Give the database to the app's own role (ALTER DATABASE ${db} OWNER TO <app role>, ` +
          "and its schemas and tables), or restore as that role; for a file you trust, pass --allow-superuser.",
      },
    );
  }
  return { session, danger, owner, ownerDanger };
}

/**
 * True when a restore into this database has no safe role to load as (it and its owner can reach
 * the server's OS), so it needs --allow-superuser. False when that cannot be told (the database is
 * out of reach): the restore itself then says what it needs.
 */
export async function superuserOnly(url: string): Promise<boolean> {
  const admin = adminConnection(url);
  try {
    const { danger, ownerDanger } = await plan(admin, url, { allowSuperuser: true });
    return danger !== null && ownerDanger !== null;
  } catch {
    return false;
  } finally {
    await admin.end({ timeout: 5 });
  }
}

/**
 * Drop the load's temporary role without letting a failure undo what the load did: after COMMIT a
 * restore that worked must not be reported as failed. A role left behind is said (it cannot log in
 * after its VALID UNTIL, a day, and the next load drops it once it is an hour old and unused).
 */
export async function releaseLoadRole(as: LoadRole): Promise<void> {
  await as.release().catch((e: unknown) =>
    stderrLog({
      level: "warn",
      msg: "the load's temporary role could not be dropped; it expires within a day, and the next load drops it",
      role: as.temporary,
      error: e instanceof Error ? e.message : String(e),
    }),
  );
}

/**
 * Run `fn` with a pool (one connection) that logs in as loadRole's choice: for writes into a live
 * database, whose triggers, defaults and policies are the app's code and would otherwise run with
 * DATABASE_URL's rights. DATABASE_URL's own role when it is safe; when no safe role exists (a
 * database only a superuser owns), that role too: the database's code is a superuser's already.
 * Each transaction on the pool should act as the owner first (actAsDatabaseOwner).
 */
export async function withLoadRole<T>(url: string, fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const as = await loadRole(url, { allowSuperuser: true });
  try {
    const sql = connect(as.url, { max: 1 });
    try {
      return await fn(sql);
    } finally {
      await sql.end({ timeout: 5 }).catch(() => {});
    }
  } finally {
    await releaseLoadRole(as);
  }
}

export async function loadRole(url: string, options: LoadRoleOptions = {}): Promise<LoadRole> {
  const admin = adminConnection(url);
  try {
    const { session, danger, owner, ownerDanger } = await plan(admin, url, options);
    const asIs = { url, release: async () => {} };
    if (!danger || (ownerDanger && !options.scratch)) return asIs;
    // A fresh role per load, with a password only this process knows; NOINHERIT is not needed:
    // everything it may become (the owner) has been checked above.
    await dropLeftovers(admin);
    const role = `${ROLE_PREFIX}${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    const password = Buffer.from(crypto.getRandomValues(new Uint8Array(24))).toString("base64url");
    // Its SCRAM verifier, not the password: a statement log never holds what logs in.
    await create(
      admin,
      session,
      danger,
      `CREATE ROLE ${quoteIdent(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
         PASSWORD '${scramVerifier(password)}' VALID UNTIL '${new Date(Date.now() + LIFETIME_MS).toISOString()}'` +
        (ownerDanger ? "" : ` IN ROLE ${quoteIdent(owner)}`),
    );
    const db = describeTarget(url).database;
    // A scratch database is empty and shinkei's own: its owner for the load is the temporary role.
    if (ownerDanger)
      await create(admin, session, danger, `ALTER DATABASE ${quoteIdent(db)} OWNER TO ${quoteIdent(role)}`).catch(
        async (e) => {
          await admin.unsafe(`DROP ROLE ${quoteIdent(role)}`).catch(() => {});
          throw e;
        },
      );
    const release = async () => {
      // A scratch database goes first, from the server's maintenance database: reassigning what the
      // file made to its owner (a superuser) would hand it the file's functions, SECURITY DEFINER
      // ones included.
      const again = adminConnection(options.scratch ? onServer(url, "postgres") : url);
      try {
        if (options.scratch) await again.unsafe(`DROP DATABASE IF EXISTS ${quoteIdent(db)} WITH (FORCE)`);
        else {
          if (ownerDanger) await again.unsafe(`ALTER DATABASE ${quoteIdent(db)} OWNER TO ${quoteIdent(owner)}`);
          await again.unsafe(`REASSIGN OWNED BY ${quoteIdent(role)} TO ${quoteIdent(owner)}`);
        }
        await again.unsafe(`DROP OWNED BY ${quoteIdent(role)}`);
        await again.unsafe(`DROP ROLE IF EXISTS ${quoteIdent(role)}`);
      } finally {
        await again.end({ timeout: 5 });
      }
    };
    const u = new URL(url);
    u.username = encodeURIComponent(role);
    u.password = encodeURIComponent(password);
    u.searchParams.delete("user");
    u.searchParams.delete("password");
    const loadUrl = u.toString();
    // Logging in can fail where pg_hba.conf allows no password login for new roles: say so.
    const probe = adminConnection(loadUrl);
    try {
      await probe`select 1`;
    } catch (e) {
      await release().catch(() => {});
      throw new ShinkeiError(
        "RESTORE_AS_SUPERUSER",
        `${session} ${danger}: shinkei writes the database (a restore's load, recover, migrate) as a temporary ` +
          `role of its owner ${owner}, and it could not log in: ${(e as Error).message}`,
        {
          hint:
            "Nothing was changed. Run as the app's own role (DATABASE_URL with that user), " +
            "or let new roles log in with a password from this host (pg_hba.conf, scram-sha-256).",
        },
      );
    } finally {
      await probe.end({ timeout: 5 });
    }
    return { url: loadUrl, temporary: role, release };
  } finally {
    await admin.end({ timeout: 5 });
  }
}

const ROLE_PREFIX = "shinkei_restore_";
/** How long a temporary role could log in with its password, were it left behind. */
const LIFETIME_MS = 86_400_000;

/**
 * Temporary roles a killed load left behind: made over an hour ago (their expiry tells when) and
 * with no session open. Dropped where nothing holds them; the rest are left for the next time.
 */
async function dropLeftovers(admin: postgres.Sql) {
  const old = await admin<{ name: string }[]>`
    select r.rolname as name from pg_catalog.pg_roles r
     where pg_catalog.starts_with(r.rolname, ${ROLE_PREFIX}) and r.rolcanlogin and not r.rolsuper
       and r.rolvaliduntil < pg_catalog.now() + ${`${LIFETIME_MS / 1000 - 3600} seconds`}::interval
       and not exists (select 1 from pg_catalog.pg_stat_activity a where a.usename = r.rolname)`.catch(() => []);
  for (const { name } of old) await admin.unsafe(`DROP ROLE ${quoteIdent(name)}`).catch(() => {});
}

/** PostgreSQL's SCRAM-SHA-256 verifier of `password` (RFC 5802, 7677), as pg_authid stores it. */
function scramVerifier(password: string): string {
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const iterations = 4096;
  const salted = pbkdf2Sync(password, salt, iterations, 32, "sha256");
  const hmac = (key: Uint8Array, text: string) => new Bun.CryptoHasher("sha256", key).update(text).digest();
  const stored = new Bun.CryptoHasher("sha256").update(hmac(salted, "Client Key")).digest("base64");
  const server = hmac(salted, "Server Key").toString("base64");
  return `SCRAM-SHA-256$${iterations}:${Buffer.from(salt).toString("base64")}$${stored}:${server}`;
}

/** Making the load's role needs CREATEROLE (or a superuser): a role without it gets why, and what to do. */
async function create(admin: postgres.Sql, session: string, danger: string, statement: string) {
  try {
    await admin.unsafe(statement);
  } catch (e) {
    throw new ShinkeiError(
      "RESTORE_AS_SUPERUSER",
      `${session} ${danger}: shinkei writes the database (a restore's load, recover, migrate) as a temporary ` +
        `role of its owner, and it could not be made: ${(e as Error).message}`,
      { hint: "Nothing was changed. Run as the app's own role (DATABASE_URL with that user)." },
    );
  }
}
