import type { Sql } from "../db.ts";
import type { Config } from "../config.ts";
import { ShinkeiError } from "../errors.ts";
import { PasswordHasher } from "./passwords.ts";
import { LoginThrottle, type ThrottleRule } from "./throttle.ts";
import { createUser, findUserByEmail, findUserById, publicUser, setPasswordHash, type User } from "./users.ts";
import { createSession, revokeUserSessions, SessionCache, type Session } from "./sessions.ts";
import { isEmailVerified } from "./recovery.ts";

export type ClientInfo = { ip?: string; userAgent?: string };

const invalid = () => new ShinkeiError("INVALID_CREDENTIALS", "invalid email or password");

/** Register, login and password change: the rules the incident broke, in one place. */
export class AuthService {
  readonly throttle: LoginThrottle;
  readonly sessions: SessionCache;

  constructor(
    private readonly sql: Sql,
    private readonly config: Pick<Config, "sessionTtlMs" | "sessionCacheTtlMs" | "login" | "recovery">,
    readonly hasher: PasswordHasher,
  ) {
    this.throttle = new LoginThrottle(sql, config.login.windowMs);
    this.sessions = new SessionCache(config.sessionCacheTtlMs);
  }

  async register(input: { email: string; password: string; name: string }): Promise<User> {
    // Cheap refusal first, so a taken email costs no hashing; the unique index still decides races.
    if (await findUserByEmail(this.sql, input.email)) {
      throw new ShinkeiError("EMAIL_TAKEN", "an account with this email already exists");
    }
    const passwordHash = await this.hasher.hash(input.password);
    return publicUser(await createUser(this.sql, { email: input.email, name: input.name, passwordHash }));
  }

  private rules(email: string, ip?: string): ThrottleRule[] {
    const rules = [{ key: `account:${email.toLowerCase()}`, limit: this.config.login.maxFailures }];
    if (ip) rules.push({ key: `ip:${ip}`, limit: this.config.login.maxFailuresPerIp });
    return rules;
  }

  /**
   * Unknown email and wrong password take the same path and the same time, and neither writes
   * anything but the failure counters. An unknown email never becomes an account.
   */
  async login(input: { email: string; password: string }, client: ClientInfo = {}) {
    const rules = this.rules(input.email, client.ip);
    await this.throttle.check(rules);
    const user = await findUserByEmail(this.sql, input.email);
    const ok = user ? await this.hasher.verify(input.password, user.passwordHash) : await this.hasher.verifyNobody(input.password);
    if (!user || !ok) {
      await this.throttle.recordFailure(rules);
      throw invalid();
    }
    await this.throttle.clear(rules[0]!.key);
    // Only after the password checked out: this answer tells no more than a wrong password would.
    if (this.config.recovery.requireEmailVerification && !(await isEmailVerified(this.sql, user.id))) {
      throw new ShinkeiError("EMAIL_NOT_VERIFIED", "confirm your email address first with the code we mailed you", {
        hint: "POST /api/v1/auth/verify-email with it, or /api/v1/auth/verify-email/resend for a new one.",
      });
    }
    const session = await createSession(this.sql, { userId: user.id, ttlMs: this.config.sessionTtlMs, ...client });
    return { token: session.token, expiresAt: session.expiresAt, user: publicUser(user) };
  }

  /** Change the password of the session's user and end every other session of theirs. */
  async changePassword(session: Session, input: { currentPassword: string; newPassword: string }, client: ClientInfo = {}) {
    const rules = this.rules(session.user.email, client.ip);
    await this.throttle.check(rules);
    const user = await findUserById(this.sql, session.userId);
    if (!user || !(await this.hasher.verify(input.currentPassword, user.passwordHash))) {
      await this.throttle.recordFailure(rules);
      throw new ShinkeiError("INVALID_CREDENTIALS", "the current password is wrong");
    }
    const hash = await this.hasher.hash(input.newPassword);
    const revokedSessions = await this.sql.begin(async (tx) => {
      await setPasswordHash(tx, user.id, hash);
      return revokeUserSessions(tx, user.id, session.id);
    });
    this.sessions.forget((s) => s.userId === user.id && s.id !== session.id);
    return { revokedSessions };
  }
}
