import type { Queryable, Sql } from "../pg/db.ts";
import type { Log } from "../log.ts";
import type { Mail } from "./templates.ts";
import type { Transport } from "./transport.ts";
import { ProcessKey } from "./seal.ts";

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
  sealed: Buffer | null;
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
 *
 * A mail carrying a code (one with `expiresAt`) is the exception: its body is sealed with a key
 * only this process holds (ProcessKey), so no table, dump, backup or WAL holds the code. Only this
 * process can send it; when it stops first the mail is dropped, and its recipient asks again.
 */
export class MailQueue {
  private sending = false;
  private stopped = false;
  private wakeUp?: () => void;
  private failingDb = false;
  private readonly loop: Promise<void>;
  private readonly key = new ProcessKey();

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
   * commits: call `wake()` then, or the next poll finds it. `expiresAt`: the mail carries a code
   * that works until then, so its body is sealed (see the class) and it is dropped unsent after.
   */
  async enqueue(q: Queryable, mail: Mail, options: { expiresAt?: Date } = {}): Promise<void> {
    if (options.expiresAt) {
      const sealed = this.key.seal(JSON.stringify({ text: mail.text, html: mail.html }), envelope(mail));
      await q`insert into mail_outbox (to_address, subject, sealed_body, sealed_by, expires_at)
              values (${mail.to}, ${mail.subject}, ${sealed}, ${this.key.id}, ${options.expiresAt})`;
      return;
    }
    await q`insert into mail_outbox (to_address, subject, text_body, html_body)
            values (${mail.to}, ${mail.subject}, ${mail.text}, ${mail.html})`;
  }

  /** Rows this server can act on: plain, sealed with its key, or past their code's expiry (to drop). */
  private takable() {
    return this.sql`(sealed_by is null or sealed_by = ${this.key.id} or expires_at <= now())`;
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
    // Another server's sealed mail is its own to send: it waits here as a retry would.
    const busy = async () =>
      (
        await this.sql`select 1 from mail_outbox where sent_at is null and failed_at is null
          and (claimed_until > now() or (due_at <= now() and ${this.takable()})) limit 1`
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
        // Sleep until the next retry falls due, or the poll, whichever is first. Another server's
        // sealed mail is this one's to act on only once its code has expired (to drop it).
        const [next] = await this.sql<{ ms: number | null }[]>`
          select greatest(0, extract(epoch from min(greatest(
            case when sealed_by is null or sealed_by = ${this.key.id} then due_at
                 else greatest(due_at, coalesce(expires_at, 'infinity')) end,
            coalesce(claimed_until, due_at))) - now()) * 1000)::float8 as ms
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
          and ${this.takable()}
        order by due_at, id limit 1 for update skip locked)
      returning id::text, to_address as "to", subject, text_body as text, html_body as html, sealed_body as sealed,
                attempts, coalesce(expires_at <= now(), false) as expired`;
    if (!row) return false;
    if (row.expired) {
      await this.abandon(row, "the code it carries expired before it could be sent");
      return true;
    }
    let body = { text: row.text ?? "", html: row.html ?? "" };
    if (row.sealed) {
      try {
        body = JSON.parse(this.key.open(row.sealed, envelope(row)));
      } catch {
        await this.abandon(row, "its sealed body does not open with this server's key: it was altered");
        return true;
      }
    }
    this.sending = true;
    try {
      await this.transport.send({ to: row.to, subject: row.subject, ...body });
    } catch (e) {
      const error = (e as Error)?.message ?? String(e);
      if (row.attempts >= this.options.maxAttempts) {
        await this.abandon(row, error);
        return true;
      }
      const delayMs = Math.min(this.options.retryBaseMs * 2 ** (row.attempts - 1), 3_600_000);
      await this.sql`update mail_outbox set due_at = now() + make_interval(secs => ${delayMs / 1000}),
        claimed_until = null, last_error = ${error} where id = ${row.id}`;
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
    await this.sql`update mail_outbox set sent_at = now(), claimed_until = null,
             text_body = null, html_body = null, sealed_body = null
           where id = ${row.id}`;
    this.log({ level: "info", msg: "mail sent", subject: row.subject, attempts: row.attempts });
    return true;
  }

  private async abandon(row: Pick<Row, "id" | "subject" | "attempts">, error: string): Promise<void> {
    await this.sql`update mail_outbox set failed_at = now(), claimed_until = null,
           text_body = null, html_body = null, sealed_body = null,
           last_error = ${error} where id = ${row.id}`;
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
    const due = await this.sql<{ n: number }[]>`select count(*)::int as n from mail_outbox
      where sent_at is null and failed_at is null and due_at <= now() and ${this.takable()}`.then(
      (r) => r[0]!.n,
      () => 0,
    );
    if (this.sending || due > 0) {
      // A timer, not Bun.sleep: a pending sleep keeps the process alive after everything else ended.
      let grace: Timer | undefined;
      await Promise.race([
        (async () => {
          while (
            !this.stopped &&
            (this.sending ||
              (await this.sql`select 1 from mail_outbox
                  where sent_at is null and failed_at is null and due_at <= now() and ${this.takable()} limit 1`.then(
                (r) => r.length > 0,
                () => false,
              )))
          ) {
            this.wake();
            await Bun.sleep(25);
          }
        })(),
        new Promise<void>((resolve) => {
          grace = setTimeout(resolve, graceMs);
        }),
      ]).finally(() => clearTimeout(grace));
    }
    this.stopped = true;
    this.wake();
    await this.loop;
    // Mail sealed with this process's key can never be opened again: dropped now, not left to look queued.
    const dropped = await this.sql`
      update mail_outbox set failed_at = now(), claimed_until = null, sealed_body = null,
        last_error = 'the server that queued it stopped first: the key its code was sealed with ended with it'
      where sealed_by = ${this.key.id} and sent_at is null and failed_at is null`.then(
      (r) => r.count,
      () => 0,
    );
    if (dropped)
      this.log({
        level: "warn",
        msg: "mail carrying a code not sent before shutdown; dropped",
        count: dropped,
        hint: "Its code was readable only by this process; the recipient asks for a new one.",
      });
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

/** What a sealed body is bound to: moved to another address or subject, it no longer opens. */
function envelope(mail: { to: string; subject: string }): string {
  return JSON.stringify([mail.to, mail.subject]);
}
