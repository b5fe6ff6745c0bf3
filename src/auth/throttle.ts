import { settleWithin, type Sql } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { countedAddress } from "../config/net.ts";

/** Who is asking: throttle keys count per address, and account events record both. */
export type ClientInfo = { ip?: string; userAgent?: string };

/** The client's address as limits count it (an IPv6 client by its /64; see countedAddress), or "". */
export const counted = (ip?: string) => (ip ? countedAddress(ip) : "");

/** The keys login attempts count under, in one place: login counts them, a password reset forgets them. */
export const loginKeys = {
  pair: (account: string, ip?: string) => `pair:${JSON.stringify([account, counted(ip)])}`,
  account: (account: string) => `account:${account}`,
  address: (ip: string) => `ip:${counted(ip)}`,
};

export type ThrottleRule = {
  key: string;
  limit: number;
  /** Past the limit, wait this long instead of refusing: for limits an attacker must not turn into a lockout. */
  delayMs?: number;
  /** What a successful attempt does to the count: forget it all, take back only itself, or stay counted. */
  onSuccess?: "clear" | "release" | "keep";
};

type Held = { digest: string; start: string; onSuccess: NonNullable<ThrottleRule["onSuccess"]> };

/**
 * An attempt to give back that the database could not take when it was settled; `until` (ms): the
 * end of its window at the latest.
 */
type Owed = { held: Held[]; until: number };

/** How often owed attempts are offered to the database again while it is away. */
const OWED_RETRY_MS = 1000;
/** How long a new attempt waits for owed give-backs before it is counted anyway. */
const OWED_WAIT_MS = 1_000;
/** Give-backs kept in memory at most (each is a few keys), so an outage under load cannot grow it without end. */
const OWED_MAX = 10_000;

/**
 * Attempt counters in PostgreSQL, so limits hold across restarts and replicas. Keys are hashed
 * ("pair:<email> <address>", "ip:<address>", ...): the table never holds an email or an address.
 *
 * An attempt is counted (reserved) before any work is done and in one statement, so twenty
 * parallel guesses against a limit of five get five tries, not however many passed a check before
 * the first failure was written.
 */
export class Throttle {
  /**
   * Attempts given back while the database was away (an outage cut them off after they were
   * counted): kept here and given back once it answers, by a retry every second and before any new
   * attempt is counted, so nobody is throttled for attempts that were never tried. Only this
   * process knows them: if it ends first they stay counted until their window ends.
   */
  private owed: Owed[] = [];
  private paying?: Promise<void>;
  private retry?: Timer;
  private stopped = false;

  constructor(
    private readonly sql: Sql,
    private readonly windowMs: number,
  ) {}

  private digest(key: string): string {
    return new Bun.CryptoHasher("sha256").update(key).digest("hex");
  }

  /**
   * Count one attempt against every rule. When a rule without `delayMs` is over its limit this
   * throws TOO_MANY_REQUESTS (with the seconds until its window ends) and counts nothing anywhere:
   * a refused attempt costs the server nothing and the client no budget.
   */
  async reserve(rules: ThrottleRule[]): Promise<Reservation> {
    // Debts first: a count the database still owes this caller must not refuse them. Waited for a
    // bounded time: while the database flaps, a long backlog must not hold every login up.
    if (this.owed.length) await settleWithin(this.payOwed(), OWED_WAIT_MS);
    const until = Date.now() + this.windowMs;
    const byDigest = new Map(rules.map((r) => [this.digest(r.key), r]));
    // One lock order for every caller, so two reservations sharing keys cannot deadlock.
    const keys = [...byDigest.keys()].sort();
    const window = this.windowMs;
    const held = await this.sql.begin(async (tx) => {
      const rows = await tx<{ key: string; failures: number; start: string; retry: number }[]>`
        insert into login_throttle as t (key, failures, window_start)
        select k, 1, now() from unnest(${tx.array(keys)}::text[]) as k order by k
        on conflict (key) do update set
          failures = case when t.window_start > now() - ${window} * interval '1 millisecond' then t.failures + 1
            else 1 end,
          window_start = case when t.window_start > now() - ${window} * interval '1 millisecond' then t.window_start
            else now() end
        returning key, failures, window_start::text as start,
          greatest(1, ceil(extract(epoch
            from window_start + ${window} * interval '1 millisecond' - now())))::int as retry`;
      let retryAfter = 0;
      let delayMs = 0;
      for (const row of rows) {
        const rule = byDigest.get(row.key)!;
        if (row.failures <= rule.limit) continue;
        if (rule.delayMs !== undefined) delayMs = Math.max(delayMs, rule.delayMs);
        else retryAfter = Math.max(retryAfter, row.retry);
      }
      if (retryAfter > 0) {
        // Thrown inside the transaction: it rolls back, so this attempt is counted nowhere.
        throw new ShinkeiError("TOO_MANY_REQUESTS", "too many attempts; try again later", { details: { retryAfter } });
      }
      return {
        delayMs,
        rows: rows.map((r) => ({ digest: r.key, start: r.start, onSuccess: byDigest.get(r.key)!.onSuccess ?? "keep" })),
      };
    });
    return new Reservation(this, held.rows, held.delayMs, until);
  }

  /**
   * Forget an account's failed logins: its owner just proved control of the mailbox (a password
   * reset). The account's ceiling and its pair with this address; other addresses' pairs expire.
   */
  async forgetAccount(email: string, ip?: string): Promise<void> {
    const account = email.trim().toLowerCase();
    const keys = [loginKeys.account(account), loginKeys.pair(account, ip)].map((k) => this.digest(k));
    await this.sql`delete from login_throttle where key = any(${this.sql.array(keys)}::text[])`;
  }

  /** @internal Take one attempt back from each held key, within the window it was counted in. */
  async takeBack(held: Held[]): Promise<void> {
    if (!held.length) return;
    // Only within the window the attempt was counted in: a window that restarted since owes it nothing.
    // Rows are locked in key order, as reserve() locks them, so the two cannot deadlock.
    await this.sql`
      update login_throttle set failures = greatest(failures - 1, 0)
      where key in (
        select key from login_throttle
        where (key, window_start) in (
          select k, s::timestamptz
          from unnest(
            ${this.sql.array(held.map((h) => h.digest))}::text[],
            ${this.sql.array(held.map((h) => h.start))}::text[]
          ) as r(k, s))
        order by key for update)`;
  }

  /** @internal Delete the held keys' rows (a success that clears its count). */
  async clear(digests: string[]): Promise<void> {
    if (digests.length) await this.sql`delete from login_throttle where key = any(${this.sql.array(digests)}::text[])`;
  }

  /** @internal Give `held` back; when the database cannot take it now, keep it owed (see `owed`). */
  async giveBack(held: Held[], until: number): Promise<void> {
    if (!held.length) return;
    try {
      await this.takeBack(held);
    } catch {
      if (this.stopped) return;
      // Bounded: past OWED_MAX the oldest stay counted (their windows end first anyway).
      if (this.owed.length >= OWED_MAX) this.owed.shift();
      this.owed.push({ held, until });
      this.arm();
    }
  }

  private arm(): void {
    if (this.retry || this.stopped) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.payOwed();
    }, OWED_RETRY_MS);
    // Never what keeps a process alive: the counts it owes end with their window anyway.
    this.retry.unref();
  }

  /**
   * Give back what is owed, oldest first, one attempt at a time (several owed on one key each take
   * one off); stops at the first the database refuses and tries again later. One pass at a time, so
   * no attempt is given back twice.
   */
  private payOwed(): Promise<void> {
    this.paying ??= this.payPass().finally(() => {
      this.paying = undefined;
      if (this.owed.length) this.arm();
    });
    return this.paying;
  }

  private async payPass(): Promise<void> {
    try {
      for (;;) {
        const now = Date.now();
        // A window that has ended owes nothing: its count is gone or starts again.
        this.owed = this.owed.filter((o) => o.until > now);
        const next = this.owed[0];
        if (!next) return;
        await this.takeBack(next.held);
        this.owed.shift();
      }
    } catch {
      // Still away: the timer tries again.
    }
  }

  /** Before the pool closes: one last try (bounded) to give back what is owed; then nothing more is kept. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retry);
    this.retry = undefined;
    if (this.owed.length) await settleWithin(this.payOwed(), 2_000);
    this.owed = [];
  }

  /** Drop windows that have ended; called now and then so the table stays small. Rows in use are left for next time. */
  async prune(): Promise<number> {
    const r = await this.sql`
      delete from login_throttle where key in (
        select key from login_throttle where window_start < now() - ${this.windowMs} * interval '1 millisecond'
        order by key for update skip locked)`;
    return r.count;
  }
}

/** One counted attempt, to be settled once its outcome is known. A failure needs nothing: it stays counted. */
export class Reservation {
  constructor(
    private readonly throttle: Throttle,
    private readonly held: Held[],
    /** How long to wait before doing the work, when a slowing rule is over its limit. */
    readonly delayMs: number,
    /** When its window ends at the latest (ms): a give-back owed past it is dropped. */
    private readonly until: number,
  ) {}

  /**
   * The attempt was not tried (the server was busy, the database failed): take it back everywhere.
   * Never throws: when the database cannot take it now, it is given back once it can.
   */
  async release(): Promise<void> {
    await this.throttle.giveBack(this.held, this.until);
  }

  /**
   * Do `work` for this attempt. A refusal of ours for the client (a 4xx error) leaves the attempt
   * counted; any other failure (busy, database down) means it was not tried, and it is given back.
   */
  async settleBy<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (e) {
      if (!(e instanceof ShinkeiError && e.status < 500)) await this.release();
      throw e;
    }
  }

  /**
   * The attempt succeeded: each rule does what its `onSuccess` says. When the database fails on the
   * way the caller answers 5xx, so the attempt did not happen for the client: it is given back
   * (a key already cleared has nothing to give back, so a half-done success is not taken twice).
   */
  async succeeded(): Promise<void> {
    try {
      await this.throttle.clear(this.held.filter((h) => h.onSuccess === "clear").map((h) => h.digest));
      await this.throttle.takeBack(this.held.filter((h) => h.onSuccess === "release"));
    } catch (e) {
      await this.release();
      throw e;
    }
  }
}
