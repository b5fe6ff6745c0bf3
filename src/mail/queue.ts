import type { Log } from "../log.ts";
import type { Mail } from "./templates.ts";
import type { Transport } from "./transport.ts";

type Item = { mail: Mail; attempts: number; dueAt: number };

export type QueueOptions = { retryBaseMs: number; maxAttempts: number; maxQueued?: number };

/**
 * An in-process outbox: `enqueue` returns at once, so no request waits on SMTP. One message is
 * sent at a time; a failed one waits retryBase * 2^(attempt-1) (capped at an hour) while the others
 * go ahead, and is dropped, with an error in the log, after `maxAttempts`. Messages still queued when
 * the process exits are lost: the codes they carry can simply be asked for again.
 */
export class MailQueue {
  private readonly items: Item[] = [];
  private sending = false;
  private timer?: ReturnType<typeof setTimeout>;
  private idleWaiters: (() => void)[] = [];
  private stopped = false;

  constructor(
    private readonly transport: Transport,
    private readonly log: Log,
    private readonly options: QueueOptions,
  ) {}

  enqueue(mail: Mail): void {
    if (this.stopped) return;
    if (this.items.length >= (this.options.maxQueued ?? 10_000)) {
      // Bounded memory: a mail flood while SMTP is down must not take the server with it.
      this.log({ level: "error", msg: "mail dropped: queue full", subject: mail.subject });
      return;
    }
    this.items.push({ mail, attempts: 0, dueAt: 0 });
    this.pump();
  }

  get size(): number {
    return this.items.length;
  }

  /** Resolves when nothing is queued or being sent. */
  idle(): Promise<void> {
    if (this.items.length === 0 && !this.sending) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private pump(): void {
    if (this.sending || this.stopped) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    const now = Date.now();
    const next = this.items.findIndex((i) => i.dueAt <= now);
    if (next < 0) {
      if (this.items.length === 0) {
        for (const w of this.idleWaiters.splice(0)) w();
        return;
      }
      const wait = Math.min(...this.items.map((i) => i.dueAt)) - now;
      this.timer = setTimeout(() => this.pump(), wait);
      return;
    }
    const item = this.items.splice(next, 1)[0]!;
    this.sending = true;
    this.send(item).finally(() => {
      this.sending = false;
      this.pump();
    });
  }

  private async send(item: Item): Promise<void> {
    item.attempts++;
    try {
      await this.transport.send(item.mail);
      this.log({ level: "info", msg: "mail sent", subject: item.mail.subject, attempts: item.attempts });
    } catch (e) {
      const error = (e as Error)?.message ?? String(e);
      if (item.attempts >= this.options.maxAttempts) {
        this.log({ level: "error", msg: "mail dropped after retries", subject: item.mail.subject, attempts: item.attempts, error });
        return;
      }
      const delayMs = Math.min(this.options.retryBaseMs * 2 ** (item.attempts - 1), 3_600_000);
      item.dueAt = Date.now() + delayMs;
      this.items.push(item);
      this.log({ level: "warn", msg: "mail not sent, will retry", subject: item.mail.subject, attempts: item.attempts, retryInMs: delayMs, error });
    }
  }

  /** Stop sending: waits up to `graceMs` for the queue to empty, then reports what is left. */
  async stop(graceMs = 5_000): Promise<void> {
    // Wait for what is being sent or due now; a message waiting out a retry delay is not worth stalling a shutdown.
    if (this.sending || this.items.some((i) => i.dueAt <= Date.now())) {
      await Promise.race([this.idle(), Bun.sleep(graceMs)]);
    }
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.items.length) this.log({ level: "warn", msg: "mail not sent before shutdown", count: this.items.length });
    for (const w of this.idleWaiters.splice(0)) w();
    this.transport.close();
  }
}
