import type { Queryable, Sql } from "../pg/db.ts";
import type { User } from "./users.ts";

export type Session = { id: string; userId: string; expiresAt: Date; user: User };

const TOKEN = /^[A-Za-z0-9_-]{43}$/;

function hashToken(token: string): Buffer {
  return Buffer.from(new Bun.CryptoHasher("sha256").update(token).digest());
}

/**
 * A random 256-bit token; only its SHA-256 is stored, so a leaked table grants no sessions.
 * Made only while the user's password hash is still `passwordHash`, the one the password was checked
 * against: a reset or change that committed meanwhile (and ended every session) must not be
 * outlived by a login that checked the old password. The row is locked (for share) until the
 * session is in, so such a change either waits for it (and then ends it) or makes this refuse.
 * Undefined when the password changed.
 */
export async function createSession(
  sql: Sql,
  input: { userId: string; passwordHash: string; ttlMs: number; userAgent?: string; ip?: string },
): Promise<{ token: string; id: string; expiresAt: Date } | undefined> {
  const token = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url");
  const [row] = await sql<{ id: string; expiresAt: Date }[]>`
    insert into sessions (token_hash, user_id, expires_at, user_agent, ip)
    select ${hashToken(token)}, u.id, now() + ${input.ttlMs} * interval '1 millisecond',
           ${input.userAgent?.slice(0, 512) ?? null}, ${input.ip ?? null}
    from users u where u.id = ${input.userId} and u.password_hash = ${input.passwordHash}
    for share
    returning id, expires_at as "expiresAt"`;
  return row ? { token, ...row } : undefined;
}

/** The live session for `token`, or undefined; expired and malformed tokens are simply not found. */
export async function findSession(sql: Sql, token: string): Promise<Session | undefined> {
  if (!TOKEN.test(token)) return undefined;
  const [row] = await sql`
    select s.id, s.user_id, s.expires_at, s.last_used_at < now() - interval '1 minute' as stale,
           u.email, u.name, u.created_at
    from sessions s join users u on u.id = s.user_id
    where s.token_hash = ${hashToken(token)} and s.expires_at > now()`;
  if (!row) return undefined;
  // Touch last_used_at at most once a minute: a write per request would cost /me its speed.
  if (row.stale) sql`update sessions set last_used_at = now() where id = ${row.id}`.catch(() => {});
  return {
    id: row.id,
    userId: row.user_id,
    expiresAt: row.expires_at,
    user: { id: row.user_id, email: row.email, name: row.name, createdAt: row.created_at },
  };
}

export async function revokeSession(sql: Sql, id: string): Promise<void> {
  await sql`delete from sessions where id = ${id}`;
}

/** Revoke every session of the user, except `keep` when given. Returns how many ended. */
export async function revokeUserSessions(sql: Queryable, userId: string, keep?: string): Promise<number> {
  const r = keep
    ? await sql`delete from sessions where user_id = ${userId} and id <> ${keep}`
    : await sql`delete from sessions where user_id = ${userId}`;
  return r.count;
}

/**
 * Live sessions remembered for `ttlMs`, so a busy client's requests do not each cost a query.
 * This process forgets a session the moment it revokes it; another replica may accept a revoked
 * token for at most `ttlMs` (SESSION_CACHE_TTL, 0 turns the cache off). Expiry is checked on every hit.
 */
export class SessionCache {
  private readonly entries = new Map<string, { session: Session; until: number }>();

  constructor(
    private readonly ttlMs: number,
    private readonly max = 10_000,
  ) {}

  get(token: string): Session | undefined {
    const hit = this.entries.get(token);
    if (!hit) return undefined;
    const now = Date.now();
    if (hit.until <= now || hit.session.expiresAt.getTime() <= now) {
      this.entries.delete(token);
      return undefined;
    }
    return hit.session;
  }

  set(token: string, session: Session): void {
    if (this.ttlMs <= 0) return;
    // Oldest first out: a Map keeps insertion order.
    if (this.entries.size >= this.max) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(token, { session, until: Date.now() + this.ttlMs });
  }

  forget(match: (s: Session) => boolean): void {
    for (const [token, { session }] of this.entries) if (match(session)) this.entries.delete(token);
  }
}
