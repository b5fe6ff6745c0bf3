import type { Queryable, Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";
import type { Mail } from "./templates.ts";
import type { Transport } from "./transport.ts";

export type QueueOptions = {
  retryBaseMs: number;
  maxAttempts: number;
  /** How often the outbox is looked at without a wake-up: mail left by a restart or another server, retries. */
  pollMs?: number;
  /** How long a server holds a row it is sending before another may take it (its process may have died). */
  claimMs?: number;
};

type Row = {
  id: string;
  to: string;
  subject: string;
  text: string | null;
  html: string | null;
  attempts: number;
  expired: boolean;
};

/**
 * The outbox, in PostgreSQL (table mail_outbox): `enqueue` writes a row through the caller's
 * connection or transaction, so a mail carrying a code commits with the code, or not at all; no
 * request waits on SMTP. A sender loop takes one due row at a time (several servers share the
 * table: a row is claimed for `claimMs`), sends it, and marks it sent; a failed one waits
 * retryBase * 2^(attempt-1) (capped at an hour) while the others go ahead, and is abandoned, with
 * an error in the log, after `maxAttempts` or once the code it carries has expired. Mail queued
 * before a restart is sent after it. Sent and abandoned rows lose their bodies at once and their
 * envelopes after MAIL_OUTBOX_KEEP (src/pg/history.ts).
 */
export class MailQueue {
  private sending = false;
  private stopped = false;
  private wakeUp?: () => void;
  private failingDb = false;
  private readonly loop: Promise<void>;

  constructor(
    private readonly sql: Sql,
    private readonly transport: Transport,
    private readonly log: Log,
    private readonly options: QueueOptions,
  ) {
    this.loop = this.run();
  }

  /**
   * Queue `mail` through `q` (a transaction, to tie it to what it carries). It goes out after `q`
   * commits: call `wake()` then, or the next poll finds it.
   */
  async enqueue(q: Queryable, mail: Mail, options: { expiresAt?: Date } = {}): Promise<void> {
    await q`insert into mail_outbox (to_address, subject, text_body, html_body, expires_at)
            values (${mail.to}, ${mail.subject}, ${mail.text}, ${mail.html}, ${options.expiresAt ?? null})`;
  }

  /** Look at the outbox now (after a commit that queued mail). */
  wake(): void {
    this.wakeUp?.();
  }

  /** Unsent mail: due now or waiting out a retry. */
  async pending(): Promise<number> {
    const [row] = await this.sql<
      { n: number }[]
    >`select count(*)::int as n from mail_outbox where sent_at is null and failed_at is null`;
    return row!.n;
  }

  /**
   * Resolves when no mail is due or being sent, here or by another server. Mail waiting out a
   * retry does not count: it may be an hour away, and another server's.
   */
  async idle(): Promise<void> {
    const busy = async () =>
      (
        await this.sql`select 1 from mail_outbox where sent_at is null and failed_at is null and (due_at <= now()
            or claimed_until > now()) limit 1`
      ).length > 0;
    while (this.sending || (await busy())) {
      if (this.stopped) return;
      this.wake();
      await Bun.sleep(25);
    }
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let waitMs = this.options.pollMs ?? 5000;
      try {
        while (!this.stopped && (await this.sendOne()));
        if (this.failingDb) this.log({ level: "info", msg: "mail outbox readable again" });
        this.failingDb = false;
        // Sleep until the next retry falls due, or the poll, whichever is first.
        const [next] = await this.sql<{ ms: number | null }[]>`
          select greatest(0, extract(epoch
            from min(greatest(due_at, coalesce(claimed_until, due_at))) - now()) * 1000)::float8 as ms
          from mail_outbox where sent_at is null and failed_at is null`;
        if (next?.ms != null) waitMs = Math.min(waitMs, Math.ceil(next.ms) + 10);
      } catch (e) {
        if (!this.failingDb)
          this.log({
            level: "error",
            msg: "mail outbox unreadable; retrying",
            error: (e as Error)?.message ?? String(e),
          });
        this.failingDb = true;
      }
      if (this.stopped) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, waitMs);
        this.wakeUp = () => (clearTimeout(t), resolve());
      });
      this.wakeUp = undefined;
    }
  }

  /** Take one due row and try it; false when none is due. */
  private async sendOne(): Promise<boolean> {
    const claimSeconds = (this.options.claimMs ?? 60_000) / 1000;
    const [row] = await this.sql<Row[]>`
      update mail_outbox set claimed_until = now() + make_interval(secs => ${claimSeconds}), attempts = attempts + 1
      where id = (
        select id from mail_outbox
        where sent_at is null and failed_at is null and due_at <= now() and (claimed_until is null
          or claimed_until <= now())
        order by due_at, id limit 1 for update skip locked)
      returning id::text, to_address as "to", subject, text_body as text, html_body as html, attempts,
                coalesce(expires_at <= now(), false) as expired`;
    if (!row) return false;
    if (row.expired) {
      await this.abandon(row, "the code it carries expired before it could be sent");
      return true;
    }
    this.sending = true;
    try {
      await this.transport.send({ to: row.to, subject: row.subject, text: row.text ?? "", html: row.html ?? "" });
    } catch (e) {
      const error = (e as Error)?.message ?? String(e);
      if (row.attempts >= this.options.maxAttempts) {
        await this.abandon(row, error);
        return true;
      }
      const delayMs = Math.min(this.options.retryBaseMs * 2 ** (row.attempts - 1), 3_600_000);
      await this.sql`update mail_outbox
          set due_at = now() + make_interval(secs => ${delayMs / 1000}), claimed_until = null, last_error = ${error}
          where id = ${row.id}`;
      this.log({
        level: "warn",
        msg: "mail not sent, will retry",
        subject: row.subject,
        attempts: row.attempts,
        retryInMs: delayMs,
        error,
      });
      return true;
    } finally {
      this.sending = false;
    }
    // The body may carry a live code: it goes as soon as it has been handed over.
    await this.sql`update mail_outbox set sent_at = now(), claimed_until = null, text_body = null, html_body = null
        where id = ${row.id}`;
    this.log({ level: "info", msg: "mail sent", subject: row.subject, attempts: row.attempts });
    return true;
  }

  private async abandon(row: Row, error: string): Promise<void> {
    await this.sql`update mail_outbox
        set failed_at = now(), claimed_until = null, text_body = null, html_body = null, last_error = ${error}
        where id = ${row.id}`;
    this.log({
      level: "error",
      msg: "mail dropped after retries",
      subject: row.subject,
      attempts: row.attempts,
      error,
    });
  }

  /** Stop sending: waits up to `graceMs` for what is due now, then leaves the rest in the outbox for the next start. */
  async stop(graceMs = 5_000): Promise<void> {
    const due = await this.sql<
      { n: number }[]
    >`select count(*)::int as n from mail_outbox where sent_at is null and failed_at is null and due_at <= now()`.then(
      (r) => r[0]!.n,
      () => 0,
    );
    if (this.sending || due > 0) {
      await Promise.race([
        (async () => {
          while (
            !this.stopped &&
            (this.sending ||
              (await this.sql`select 1 from mail_outbox where sent_at is null and failed_at is null
                  and due_at <= now() limit 1`.then(
                (r) => r.length > 0,
                () => false,
              )))
          ) {
            this.wake();
            await Bun.sleep(25);
          }
        })(),
        Bun.sleep(graceMs),
      ]);
    }
    this.stopped = true;
    this.wake();
    await this.loop;
    const left = await this.pending().catch(() => null);
    if (left)
      this.log({
        level: "warn",
        msg: "mail not sent before shutdown",
        count: left,
        kept: "in the outbox: the next start (or another server) sends it",
      });
    this.transport.close();
  }
}
