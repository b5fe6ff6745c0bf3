import { duration, int, type Values } from "./values.ts";

/** Login and registration limits, and the password hashing that both queue for. */
export const entries = {
  LOGIN_MAX_FAILURES: int(5, 1, 1000),
  LOGIN_MAX_FAILURES_PER_IP: int(50, 1, 100_000),
  LOGIN_MAX_FAILURES_PER_ACCOUNT: int(100, 1, 1_000_000),
  LOGIN_ACCOUNT_DELAY: duration("2s", "1m"),
  LOGIN_WINDOW: duration("15m", "7d"),
  REGISTER_MAX_PER_IP: int(10, 1, 100_000),
  HASH_CONCURRENCY: int(2, 1, 64),
  HASH_QUEUE_LIMIT: int(128, 1, 100_000),
  HASH_WAIT_BUDGET: duration("2s", "1m"),
  REGISTER_HASH_CONCURRENCY: int(1, 1, 64),
  REGISTER_HASH_QUEUE_LIMIT: int(16, 1, 100_000),
  ARGON2_MEMORY_KIB: int(65536, 1024, 4_194_304),
  ARGON2_TIME_COST: int(2, 1, 20),
};

export type HashingConfig = {
  concurrency: number;
  queueLimit: number;
  memoryCost: number;
  timeCost: number;
  waitBudgetMs: number;
};

export function read(r: Values<typeof entries>) {
  const argon2 = { memoryCost: r.ARGON2_MEMORY_KIB, timeCost: r.ARGON2_TIME_COST, waitBudgetMs: r.HASH_WAIT_BUDGET };
  return {
    login: {
      /** Per (account, address) pair: the hard limit. */
      maxFailures: r.LOGIN_MAX_FAILURES,
      maxFailuresPerIp: r.LOGIN_MAX_FAILURES_PER_IP,
      /** Per account from every address: past it attempts wait `accountDelayMs`, never refused. */
      maxFailuresPerAccount: r.LOGIN_MAX_FAILURES_PER_ACCOUNT,
      accountDelayMs: r.LOGIN_ACCOUNT_DELAY,
      /** Registrations per address; counted in the same window. */
      registerMaxPerIp: r.REGISTER_MAX_PER_IP,
      windowMs: r.LOGIN_WINDOW,
    },
    hashing: { concurrency: r.HASH_CONCURRENCY, queueLimit: r.HASH_QUEUE_LIMIT, ...argon2 } as HashingConfig,
    /** Registration's own hash queue, so a registration flood cannot starve logins. */
    registerHashing: {
      concurrency: r.REGISTER_HASH_CONCURRENCY,
      queueLimit: r.REGISTER_HASH_QUEUE_LIMIT,
      ...argon2,
    } as HashingConfig,
  };
}
