import type { Sql } from "../db.ts";
import { ShinkeiError } from "../errors.ts";

export type ThrottleRule = { key: string; limit: number };

/**
 * Failed-login counters in PostgreSQL, so limits hold across restarts and replicas. Keys are
 * hashed ("account:<email>", "ip:<address>"): the table never holds an email or an address.
 */
export class LoginThrottle {
  constructor(
    private readonly sql: Sql,
    private readonly windowMs: number,
  ) {}

  private digest(key: string): string {
    return new Bun.CryptoHasher("sha256").update(key).digest("hex");
  }

  /** Throw TOO_MANY_REQUESTS, with the seconds until the window ends, when any rule is over its limit. */
  async check(rules: ThrottleRule[]): Promise<void> {
    const keys = rules.map((r) => this.digest(r.key));
    const rows = await this.sql<{ key: string; failures: number; retry: number }[]>`
      select key, failures,
             ceil(extract(epoch from window_start + ${this.windowMs} * interval '1 millisecond' - now()))::int as retry
      from login_throttle
      where key = any(${this.sql.array(keys)}) and window_start > now() - ${this.windowMs} * interval '1 millisecond'`;
    let retryAfter = 0;
    for (const row of rows) {
      const rule = rules[keys.indexOf(row.key)];
      if (rule && row.failures >= rule.limit) retryAfter = Math.max(retryAfter, row.retry, 1);
    }
    if (retryAfter > 0) {
      throw new ShinkeiError("TOO_MANY_REQUESTS", "too many failed attempts; try again later", { details: { retryAfter } });
    }
  }

  async recordFailure(rules: ThrottleRule[]): Promise<void> {
    const keys = rules.map((r) => this.digest(r.key));
    await this.sql`
      insert into login_throttle (key, failures, window_start)
      select k, 1, now() from unnest(${this.sql.array(keys)}::text[]) as k
      on conflict (key) do update set
        failures = case when login_throttle.window_start > now() - ${this.windowMs} * interval '1 millisecond'
                        then login_throttle.failures + 1 else 1 end,
        window_start = case when login_throttle.window_start > now() - ${this.windowMs} * interval '1 millisecond'
                            then login_throttle.window_start else now() end`;
  }

  async clear(key: string): Promise<void> {
    await this.sql`delete from login_throttle where key = ${this.digest(key)}`;
  }

  /** Drop windows that have ended; called now and then so the table stays small. */
  async prune(): Promise<number> {
    const r = await this.sql`delete from login_throttle where window_start < now() - ${this.windowMs} * interval '1 millisecond'`;
    return r.count;
  }
}
