import { ShinkeiError } from "../errors.ts";

export type HashingOptions = { concurrency: number; queueLimit: number; memoryCost: number; timeCost: number };

/**
 * argon2id through Bun.password, with a bound on how many hashes run at once: each takes
 * `memoryCost` KiB, so an unbounded login flood would exhaust memory. Past `queueLimit` waiters
 * we answer BUSY at once rather than queueing without end.
 */
export class PasswordHasher {
  private running = 0;
  private waiting: (() => void)[] = [];
  private dummy?: Promise<string>;

  constructor(private readonly options: HashingOptions) {}

  private async slot<T>(work: () => Promise<T>): Promise<T> {
    if (this.running >= this.options.concurrency) {
      if (this.waiting.length >= this.options.queueLimit) {
        throw new ShinkeiError("BUSY", "the server is busy; try again shortly", { details: { retryAfter: 1 } });
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running++;
    }
    try {
      return await work();
    } finally {
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
    return (this.dummy ??= Bun.password.hash(crypto.randomUUID(), { algorithm: "argon2id", memoryCost: this.options.memoryCost, timeCost: this.options.timeCost }));
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
}
