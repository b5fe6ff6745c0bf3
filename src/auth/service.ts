import type { Sql } from "../pg/db.ts";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import { PasswordHasher } from "./passwords.ts";
import { counted, loginKeys, Throttle, type ClientInfo, type Reservation, type ThrottleRule } from "./throttle.ts";
import {
  createUser,
  findUserByEmail,
  findUserById,
  publicUser,
  replacePasswordHash,
  setPasswordHash,
  type User,
  type UserRow,
} from "./users.ts";
import { createSession, revokeUserSessions, SessionCache, type Session } from "./sessions.ts";
import { isEmailVerified } from "./password-reset.ts";

const invalid = () => new ShinkeiError("INVALID_CREDENTIALS", "invalid email or password");

/** Register, login and password change: the rules the incident broke, in one place. */
export class AuthService {
  readonly throttle: Throttle;
  readonly sessions: SessionCache;
  /** Logins and password changes hash here. */
  readonly hasher: PasswordHasher;
  /** Registrations hash in a queue of their own: a flood of them meets BUSY there and leaves logins alone. */
  readonly registerHasher: PasswordHasher;

  constructor(
    private readonly sql: Sql,
    private readonly config: Pick<
      Config,
      "sessionTtlMs" | "sessionCacheTtlMs" | "login" | "hashing" | "registerHashing" | "recovery"
    >,
  ) {
    this.throttle = new Throttle(sql, config.login.windowMs);
    this.sessions = new SessionCache(config.sessionCacheTtlMs);
    this.hasher = new PasswordHasher(config.hashing);
    this.registerHasher = new PasswordHasher(config.registerHashing);
  }

  /** Every registration attempt from an address counts, made or refused, against REGISTER_MAX_PER_IP. */
  async register(input: { email: string; password: string; name: string }, client: ClientInfo = {}): Promise<User> {
    const held = client.ip
      ? await this.throttle.reserve([
          { key: `register:${counted(client.ip)}`, limit: this.config.login.registerMaxPerIp },
        ])
      : undefined;
    return this.attempt(held, async () => {
      // Cheap refusal first, so a taken email costs no hashing; the unique index still decides races.
      if (await findUserByEmail(this.sql, input.email)) {
        throw new ShinkeiError("EMAIL_TAKEN", "an account with this email already exists");
      }
      const passwordHash = await this.registerHasher.hash(input.password);
      return publicUser(await createUser(this.sql, { email: input.email, name: input.name, passwordHash }));
    });
  }

  /**
   * The strict limit is per (account, address) pair, so an attacker locks out only themselves; the
   * address limit stops one address spraying many accounts; the account ceiling, far higher, slows
   * guesses at one account from many addresses without ever refusing its owner.
   */
  private loginRules(email: string, ip?: string): ThrottleRule[] {
    const { maxFailures, maxFailuresPerIp, maxFailuresPerAccount, accountDelayMs } = this.config.login;
    const account = email.trim().toLowerCase();
    const rules: ThrottleRule[] = [
      { key: loginKeys.pair(account, ip), limit: maxFailures, onSuccess: "clear" },
      { key: loginKeys.account(account), limit: maxFailuresPerAccount, delayMs: accountDelayMs, onSuccess: "release" },
    ];
    // A success releases only its own attempt here: one valid account must not wipe an address's record.
    if (ip) rules.push({ key: loginKeys.address(ip), limit: maxFailuresPerIp, onSuccess: "release" });
    return rules;
  }

  /**
   * Do `work` under a reservation. The wait of a slowing limit comes first, before the answer is
   * known, so a client cannot cut it short by hanging up. A refusal of ours (4xx) stays counted;
   * an attempt we could not try (busy, database down) is given back (see Reservation.settleBy).
   */
  private async attempt<T>(held: Reservation | undefined, work: () => Promise<T>): Promise<T> {
    if (!held) return work();
    if (held.delayMs) await Bun.sleep(held.delayMs);
    return held.settleBy(work);
  }

  /**
   * Unknown email and wrong password take the same path and the same time, and neither writes
   * anything but the attempt counters. An unknown email never becomes an account.
   */
  async login(input: { email: string; password: string }, client: ClientInfo = {}) {
    const held = await this.throttle.reserve(this.loginRules(input.email, client.ip));
    const user = await this.attempt(held, async () => {
      const user = await findUserByEmail(this.sql, input.email);
      const ok = user
        ? await this.hasher.verify(input.password, user.passwordHash)
        : await this.hasher.verifyNobody(input.password);
      if (!user || !ok) throw invalid();
      return user;
    });
    await held.succeeded();
    const passwordHash = await this.rehashIfStale(user, input.password);
    // Only after the password checked out: this answer tells no more than a wrong password would.
    if (this.config.recovery.requireEmailVerification && !(await isEmailVerified(this.sql, user.id))) {
      throw new ShinkeiError("EMAIL_NOT_VERIFIED", "confirm your email address first with the code we mailed you", {
        hint: "POST /api/v1/auth/verify-email with it, or /api/v1/auth/verify-email/resend for a new one.",
      });
    }
    const { sessionTtlMs: ttlMs } = this.config;
    const session = await createSession(this.sql, { userId: user.id, passwordHash, ttlMs, ...client });
    // The password was reset or changed while this one was checked: it is no longer the password.
    if (!session) throw invalid();
    return { token: session.token, expiresAt: session.expiresAt, user: publicUser(user) };
  }

  /**
   * Hash again with today's settings; the hash stored now (the new one, or the old one when it was
   * not replaced). A busy hash queue skips it: the next login tries again.
   */
  private async rehashIfStale(user: UserRow, password: string): Promise<string> {
    if (!this.hasher.needsRehash(user.passwordHash)) return user.passwordHash;
    try {
      const fresh = await this.hasher.hash(password);
      return (await replacePasswordHash(this.sql, user.id, user.passwordHash, fresh)) ? fresh : user.passwordHash;
    } catch (e) {
      if (!(e instanceof ShinkeiError && e.code === "BUSY")) throw e;
      return user.passwordHash;
    }
  }

  /** Change the password of the session's user and end every other session of theirs. */
  async changePassword(
    session: Session,
    input: { currentPassword: string; newPassword: string },
    client: ClientInfo = {},
  ) {
    const held = await this.throttle.reserve(this.loginRules(session.user.email, client.ip));
    const user = await this.attempt(held, async () => {
      const user = await findUserById(this.sql, session.userId);
      if (!user || !(await this.hasher.verify(input.currentPassword, user.passwordHash))) {
        throw new ShinkeiError("INVALID_CREDENTIALS", "the current password is wrong");
      }
      return user;
    });
    await held.succeeded();
    const hash = await this.hasher.hash(input.newPassword);
    const revokedSessions = await this.sql.begin(async (tx) => {
      // Only over the password just checked, and only from a session still live: a reset that went
      // through meanwhile (it ended this session) must not be overwritten by whoever held it.
      // The user's row first, as a reset locks it, so the two cannot deadlock.
      if (!(await setPasswordHash(tx, user.id, hash, user.passwordHash))) {
        // The hash changed since it was checked: a login that rehashed the same password (then the
        // current password still opens it, checked again under the row's lock), or a reset.
        const [now] = await tx<{ hash: string }[]>`
          select password_hash as hash from users where id = ${user.id} for update`;
        const same = now !== undefined && (await this.hasher.verify(input.currentPassword, now.hash));
        if (!same || !(await setPasswordHash(tx, user.id, hash, now.hash)))
          throw new ShinkeiError("INVALID_CREDENTIALS", "the current password is wrong (it changed meanwhile)");
      }
      const [live] = await tx`select 1 from sessions where id = ${session.id} and expires_at > now()`;
      if (!live) throw new ShinkeiError("UNAUTHORIZED", "sign in first: no valid session");
      return revokeUserSessions(tx, user.id, session.id);
    });
    this.sessions.forget((s) => s.userId === user.id && s.id !== session.id);
    return { revokedSessions };
  }
}
