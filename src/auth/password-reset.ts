import type { Queryable, Sql } from "../pg/db.ts";
import type { Config } from "../config/index.ts";
import type { Log } from "../log.ts";
import { ShinkeiError } from "../errors.ts";
import { renderMail, type MailQueue, type TemplateName } from "../mail/index.ts";
import type { PasswordHasher } from "./passwords.ts";
import { loginKeys, type ClientInfo, type Throttle, type ThrottleRule } from "./throttle.ts";
import type { SessionCache } from "./sessions.ts";
import { revokeUserSessions } from "./sessions.ts";
import { findUserByEmail, findUserById, setPasswordHash, type User } from "./users.ts";
import { consumeCode, findCodeOwner, issueCode, pruneCodes, type CodePurpose } from "./account-codes.ts";

export type Clock = () => Date;

/** What every "we mailed you, if ..." route answers, byte for byte, whether the account exists or not. */
export const RESET_ACCEPTED = {
  status: "accepted",
  message: "If an account uses this address, a reset code is on its way.",
} as const;
export const VERIFY_ACCEPTED = {
  status: "accepted",
  message: "If an account uses this address and is not verified yet, a new code is on its way.",
} as const;
export const REGISTER_ACCEPTED = {
  status: "accepted",
  message: "Check your mailbox: we sent a code to confirm the address.",
} as const;

const DUPLICATE_NOTICE_INTERVAL_MS = 86_400_000;

/** "1 hour", "24 hours", "90 minutes": for a sentence in a mail. */
function humanDuration(ms: number): string {
  const [n, unit] =
    ms % 86_400_000 === 0 && ms > 86_400_000 * 2
      ? [ms / 86_400_000, "day"]
      : ms % 3_600_000 === 0
        ? [ms / 3_600_000, "hour"]
        : ms % 60_000 === 0
          ? [ms / 60_000, "minute"]
          : [Math.ceil(ms / 1000), "second"];
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

const invalidCode = () =>
  new ShinkeiError("INVALID_CODE", "the code is wrong, used or expired", {
    hint: "Ask for a new one; a code from any of the last few mails works until it expires.",
  });

export async function isEmailVerified(sql: Queryable, userId: string): Promise<boolean> {
  const [row] = await sql`select email_verified_at is not null as ok from users where id = ${userId}`;
  return row?.ok === true;
}

async function recordEvent(sql: Queryable, userId: string, kind: string, client: ClientInfo) {
  await sql`insert into account_events (user_id, kind, ip, user_agent)
            values (${userId}, ${kind}, ${client.ip ?? null}, ${client.userAgent?.slice(0, 512) ?? null})`;
}

type Deps = {
  sql: Sql;
  config: Pick<Config, "mail" | "recovery" | "login">;
  throttle: Throttle;
  hasher: PasswordHasher;
  sessions: SessionCache;
  /** Undefined when mail is off: the routes that need it answer MAIL_DISABLED. */
  mail: MailQueue | undefined;
  log: Log;
  clock?: Clock;
};

/**
 * The way back into an existing account: password reset by mailed code, email verification, and
 * the notice to an owner when someone registers with their address. Whatever depends on whether
 * an account exists runs after the answer is sent, so answers and their timing tell nothing.
 */
export class AccountRecovery {
  private readonly tasks = new Set<Promise<void>>();
  readonly now: Clock;

  constructor(private readonly deps: Deps) {
    this.now = deps.clock ?? (() => new Date());
  }

  get mailOn(): boolean {
    return this.deps.mail !== undefined;
  }

  private requireMail(): MailQueue {
    if (!this.deps.mail) {
      throw new ShinkeiError("MAIL_DISABLED", "this server sends no mail, so it cannot mail codes", {
        hint: "The operator must set SMTP_URL.",
      });
    }
    return this.deps.mail;
  }

  /**
   * As login: the hard limit is per (email, address), so whoever knows an email cannot use up its
   * owner's requests or guesses from another address; per email from every address there is a
   * ceiling past which attempts wait, never one that refuses.
   */
  private rules(scope: string, email: string, client: ClientInfo): ThrottleRule[] {
    const { maxFailures, maxFailuresPerIp, maxFailuresPerAccount, accountDelayMs } = this.deps.config.login;
    const account = email.trim().toLowerCase();
    const rules: ThrottleRule[] = [
      { key: `${scope}:${loginKeys.pair(account, client.ip)}`, limit: maxFailures, onSuccess: "clear" },
      { key: `${scope}:${account}`, limit: maxFailuresPerAccount, delayMs: accountDelayMs, onSuccess: "release" },
    ];
    // The address shares its budget with failed logins: one client gets one allowance for guessing.
    if (client.ip) rules.push({ key: loginKeys.address(client.ip), limit: maxFailuresPerIp, onSuccess: "release" });
    return rules;
  }

  /** Count one attempt; past the per-email ceiling, wait before going on (see rules). */
  private async reserve(scope: string, email: string, client: ClientInfo) {
    const held = await this.deps.throttle.reserve(this.rules(scope, email, client));
    if (held.delayMs) await Bun.sleep(held.delayMs);
    return held;
  }

  /**
   * Bookkeeping after the change has committed (the attempt counters): waited for, but a failure is
   * logged, not answered: the reset or verification stands, and must not come back as a 500.
   */
  private async afterCommit(what: string, task: () => Promise<void>): Promise<void> {
    await task().catch((e) =>
      this.deps.log({ level: "error", msg: `${what} failed`, error: (e as Error)?.message ?? String(e) }),
    );
  }

  /** Run `task` after the answer; its failure is logged, never shown to the client. */
  private later(what: string, task: () => Promise<void>): void {
    const p = task()
      .catch((e) => this.deps.log({ level: "error", msg: `${what} failed`, error: (e as Error)?.message ?? String(e) }))
      .finally(() => this.tasks.delete(p));
    this.tasks.add(p);
  }

  /** Queue a mail through `q` (the pool, or the transaction of what it carries); it goes after `q` commits. */
  private async send(
    template: TemplateName,
    user: Pick<User, "email" | "name">,
    vars: Record<string, string> = {},
    q: Queryable = this.deps.sql,
    expiresAt?: Date,
  ) {
    const { publicUrl } = this.deps.config.mail;
    await this.deps.mail?.enqueue(
      q,
      renderMail(template, user.email, { name: user.name, email: user.email, publicUrl, ...vars }),
      { expiresAt },
    );
    if (q === this.deps.sql) this.deps.mail?.wake();
  }

  private async mailCode(user: Pick<User, "id" | "email" | "name">, purpose: CodePurpose) {
    const ttlMs =
      purpose === "password_reset"
        ? this.deps.config.recovery.passwordResetTtlMs
        : this.deps.config.recovery.verificationTtlMs;
    // The mail is queued in the code's own transaction: no code without its mail, no mail without its code.
    const code = await issueCode(
      this.deps.sql,
      { userId: user.id, purpose, ttlMs, now: this.now() },
      (tx, code, expiresAt) =>
        this.send(
          purpose === "password_reset" ? "password-reset" : "verify-email",
          user,
          { code, ttl: humanDuration(ttlMs) },
          tx,
          expiresAt,
        ),
    );
    // null: the mailbox already holds the most codes that may be live at once, and those still work.
    if (code !== null) this.deps.mail?.wake();
  }

  /**
   * Every request costs the same before the answer: one counted attempt (each request counts, so
   * nobody can mail-bomb an address). The lookup happens afterwards.
   */
  async requestReset(email: string, client: ClientInfo = {}): Promise<void> {
    this.requireMail();
    await this.reserve("reset-request", email, client);
    this.later("password reset mail", async () => {
      const user = await findUserByEmail(this.deps.sql, email);
      if (user) await this.mailCode(user, "password_reset");
    });
  }

  /** Set a new password with a mailed code: every session ends, the event is recorded, the owner is told. */
  async confirmReset(
    input: { email: string; code: string; newPassword: string },
    client: ClientInfo = {},
  ): Promise<{ revokedSessions: number }> {
    this.requireMail();
    const { sql, throttle, hasher } = this.deps;
    const held = await this.reserve("reset-confirm", input.email, client);
    const now = this.now();
    // A wrong code stays counted; an attempt the database or a full hash queue cut off is given back.
    const [userId, revoked] = await held.settleBy(async () => {
      const userId = await findCodeOwner(sql, { email: input.email, code: input.code, purpose: "password_reset", now });
      // Hash only for a live code, so a flood of wrong codes costs no argon2 time.
      const hash = userId ? await hasher.hash(input.newPassword) : undefined;
      const revoked = userId
        ? await sql.begin(async (tx) => {
            if (!(await consumeCode(tx, { userId, code: input.code, purpose: "password_reset", now }))) return null;
            await setPasswordHash(tx, userId, hash!);
            // The code came to this mailbox: that proves the address as well as verification would.
            await tx`update users set email_verified_at = coalesce(email_verified_at, ${now}) where id = ${userId}`;
            const n = await revokeUserSessions(tx, userId);
            await recordEvent(tx, userId, "password_reset", client);
            return n;
          })
        : null;
      if (!userId || revoked === null) throw invalidCode(); // the attempt stays counted
      return [userId, revoked] as const;
    });
    this.deps.sessions.forget((s) => s.userId === userId);
    await this.afterCommit("settling the reset's attempt", () => held.succeeded());
    // The owner just proved control of the mailbox; failed logins before that should not keep them out.
    await this.afterCommit("forgetting failed logins", () => throttle.forgetAccount(input.email, client.ip));
    this.announcePasswordChange(userId, "with a reset code sent to this address", now);
    return { revokedSessions: revoked };
  }

  /** Tell the owner their password changed (after a reset, or from a signed-in session). */
  announcePasswordChange(userId: string, how: string, now = this.now()): void {
    if (!this.mailOn) return;
    this.later("password changed mail", async () => {
      const user = await findUserById(this.deps.sql, userId);
      if (user)
        await this.send("password-changed", user, {
          how,
          when: `${now.toISOString().slice(0, 16).replace("T", " ")} UTC`,
        });
    });
  }

  async verifyEmail(input: { email: string; code: string }, client: ClientInfo = {}): Promise<{ verified: true }> {
    this.requireMail();
    const { sql } = this.deps;
    const held = await this.reserve("verify", input.email, client);
    const now = this.now();
    await held.settleBy(async () => {
      const userId = await findCodeOwner(sql, { email: input.email, code: input.code, purpose: "verify_email", now });
      const ok = userId
        ? await sql.begin(async (tx) => {
            if (!(await consumeCode(tx, { userId, code: input.code, purpose: "verify_email", now }))) return false;
            await tx`update users set email_verified_at = coalesce(email_verified_at, ${now}) where id = ${userId}`;
            await recordEvent(tx, userId, "email_verified", client);
            return true;
          })
        : false;
      if (!ok) throw invalidCode(); // the attempt stays counted
    });
    await this.afterCommit("settling the verification's attempt", () => held.succeeded());
    return { verified: true };
  }

  /** A fresh verification code for an unverified account; answered like a reset request. */
  async resendVerification(email: string, client: ClientInfo = {}): Promise<void> {
    this.requireMail();
    await this.reserve("verify-request", email, client);
    this.later("verification mail", async () => {
      const user = await findUserByEmail(this.deps.sql, email);
      if (user && !(await isEmailVerified(this.deps.sql, user.id))) await this.mailCode(user, "verify_email");
    });
  }

  /** Registration would create an account nobody could ever sign in to. */
  assertCanRegister(): void {
    if (this.deps.config.recovery.requireEmailVerification) this.requireMail();
  }

  /** A new account gets its verification code (when mail is on). */
  registered(user: User): void {
    if (!this.mailOn) return;
    this.later("verification mail", () => this.mailCode(user, "verify_email"));
  }

  /** Someone registered with a taken address: tell its owner, at most once a day, how to get back in. */
  duplicateRegistration(email: string): void {
    if (!this.mailOn) return;
    this.later("duplicate registration notice", async () => {
      const { sql } = this.deps;
      const user = await findUserByEmail(sql, email);
      if (!user) return;
      const now = this.now();
      // One statement decides, so concurrent attempts still send one notice.
      const due = await sql`
        insert into account_notices (user_id, kind, sent_at) values (${user.id}, 'duplicate_registration', ${now})
        on conflict (user_id, kind) do update set sent_at = excluded.sent_at
          where account_notices.sent_at <= ${new Date(now.getTime() - DUPLICATE_NOTICE_INTERVAL_MS)}
        returning 1`;
      if (due.length) await this.send("duplicate-registration", user);
    });
  }

  /** Expired codes go; called now and then by the server. */
  prune(): Promise<number> {
    return pruneCodes(this.deps.sql, this.now());
  }

  /** Resolves when every task started after an answer (lookups, codes) has finished. */
  async settled(): Promise<void> {
    while (this.tasks.size) await Promise.all([...this.tasks]);
  }

  /** ... and the outbox is empty too (which, while SMTP is down, can take a while). */
  async idle(): Promise<void> {
    await this.settled();
    await this.deps.mail?.idle();
  }
}
