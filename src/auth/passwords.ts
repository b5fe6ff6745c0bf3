import { ShinkeiError } from "../errors.ts";

export type HashingOptions = {
  concurrency: number;
  queueLimit: number;
  memoryCost: number;
  timeCost: number;
  /** How long a request may wait for a hashing slot; the queue is as long as the measured rate clears in this. */
  waitBudgetMs?: number;
};

/** Weight of the newest hash in the measured time per hash: a change of load shows within a few hashes. */
const SMOOTHING = 0.2;

/**
 * argon2id through Bun.password, with a bound on how many hashes run at once: each takes
 * `memoryCost` KiB, so an unbounded login flood would exhaust memory.
 *
 * Waiting is bounded by time, not only by count: the queue admits as many as the measured rate
 * (`concurrency` slots, each taking the smoothed time of recent hashes) clears within
 * `waitBudgetMs`, and never more than `queueLimit`. Past that the answer is BUSY (503) at once,
 * with a Retry-After of the time the queue takes to clear: a client with a 15 s timeout gets a 503
 * in well under a second, not a timeout after waiting 25 s behind 128 others. Until a hash has
 * been timed, `queueLimit` alone applies.
 */
export class PasswordHasher {
  private running = 0;
  private waiting: (() => void)[] = [];
  private dummy?: Promise<string>;
  /** Smoothed time of one hash while the slots are in use, ms; undefined until one has run. */
  private msPerHash?: number;

  constructor(private readonly options: HashingOptions) {}

  /** How many may wait now: what the measured rate clears within the budget, capped by queueLimit. */
  get queueLimit(): number {
    const { waitBudgetMs, concurrency, queueLimit } = this.options;
    if (waitBudgetMs === undefined || this.msPerHash === undefined) return queueLimit;
    // The newcomer at position p waits for p + 1 hashes to leave `concurrency` slots.
    return Math.max(0, Math.min(queueLimit, Math.floor((waitBudgetMs * concurrency) / this.msPerHash) - 1));
  }

  /** Seconds until what is queued and running now has cleared, at the measured rate (at least 1). */
  private retryAfter(): number {
    const per = this.msPerHash ?? 1000;
    return Math.max(1, Math.ceil(((this.waiting.length + this.running) * per) / this.options.concurrency / 1000));
  }

  private async slot<T>(work: () => Promise<T>): Promise<T> {
    if (this.running >= this.options.concurrency) {
      if (this.waiting.length >= this.queueLimit) {
        throw new ShinkeiError("BUSY", "the server is busy; try again shortly", {
          details: { retryAfter: this.retryAfter() },
        });
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running++;
    }
    const started = performance.now();
    try {
      return await work();
    } finally {
      const ms = performance.now() - started;
      this.msPerHash = this.msPerHash === undefined ? ms : this.msPerHash + SMOOTHING * (ms - this.msPerHash);
      // Hand the slot straight to the next waiter, so `running` never dips and lets a newcomer jump the queue.
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }

  hash(password: string): Promise<string> {
    const { memoryCost, timeCost } = this.options;
    return this.slot(() => Bun.password.hash(password, { algorithm: "argon2id", memoryCost, timeCost }));
  }

  verify(password: string, hash: string): Promise<boolean> {
    return this.slot(() => Bun.password.verify(password, hash).catch(() => false));
  }

  /**
   * The same work as a real verify, against a hash made with our parameters, so an unknown email
   * costs what a wrong password does and the two cannot be told apart by timing.
   */
  async verifyNobody(password: string): Promise<false> {
    await this.verify(password, await this.nobodyHash());
    return false;
  }

  /** The hash verifyNobody checks against: argon2id with exactly the parameters of a real hash. */
  nobodyHash(): Promise<string> {
    return (this.dummy ??= Bun.password.hash(crypto.randomUUID(), {
      algorithm: "argon2id",
      memoryCost: this.options.memoryCost,
      timeCost: this.options.timeCost,
    }));
  }

  /**
   * Whether `hash` was made otherwise than we would make it now (another algorithm, or argon2
   * memory or time cost): such a user's logins would take another time than everyone else's
   * (and than an unknown email's), so their hash is made again on their next login.
   */
  needsRehash(hash: string): boolean {
    const m = /^\$argon2id\$v=\d+\$m=(\d+),t=(\d+),/.exec(hash);
    return !m || Number(m[1]) !== this.options.memoryCost || Number(m[2]) !== this.options.timeCost;
  }

  get load() {
    return { running: this.running, waiting: this.waiting.length };
  }

  /** The measured time per hash (ms, undefined before the first) and the queue limit it gives now. */
  get rate() {
    return { msPerHash: this.msPerHash, queueLimit: this.queueLimit };
  }
}
