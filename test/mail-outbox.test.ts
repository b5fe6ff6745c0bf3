import { afterAll, beforeAll, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { newAccount, startTestServer } from "./support/server.ts";
import { TestSmtp, codeIn } from "./support/smtp.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { issueCode } from "../src/auth/account-codes.ts";
import { MailQueue } from "../src/mail/queue.ts";
import { pruneHistory } from "../src/pg/history.ts";
import { loadConfig } from "../src/config/index.ts";

let db: TestDatabase;
let smtp: TestSmtp;

beforeAll(async () => {
  db = await freshDatabase("outbox");
  await migrate(db.sql);
  smtp = await TestSmtp.start();
});
afterAll(async () => {
  await smtp?.stop();
  await db?.drop();
});

const env = (smtpUrl: string) => ({
  SMTP_URL: smtpUrl,
  MAIL_FROM: "shinkei <no-reply@shinkei.test>",
  MAIL_RETRY_BASE: "1s",
  PUBLIC_URL: "https://auth.shinkei.test",
  LOGIN_MAX_FAILURES_PER_IP: "100000",
  REGISTER_MAX_PER_IP: "100000",
});

test("a reset mail queued while SMTP is down goes out at the server's next start, and its code works", async () => {
  const down = await TestSmtp.start();
  await down.stop();
  const before = await startTestServer(db, env(down.url));
  const email = await newAccount(before, "restart").catch(async (e) => {
    await before.stop();
    throw e;
  });
  try {
    const r = await before.api("/api/v1/auth/password-reset", { method: "POST", json: { email } });
    expect(r.status).toBe(202);
    await before.recovery.settled();
    while (!before.logs.some((l) => l.msg === "mail not sent, will retry" && /reset/.test(String(l.subject))))
      await Bun.sleep(20);
  } finally {
    await before.stop();
  }
  expect(before.logs.find((l) => l.msg === "mail not sent before shutdown")).toBeDefined();
  const [queued] =
    await db.sql`select count(*)::int as n from mail_outbox where to_address = ${email} and subject ~ 'reset'
      and sent_at is null`;
  expect(queued!.n).toBe(1);

  // The restart, now with SMTP up: the mail queued before it goes out, and the code in it works.
  const after = await startTestServer(db, env(smtp.url));
  try {
    const mail = await smtp.waitFor(email, /password reset code/);
    const code = codeIn(mail);
    const confirm = await after.api("/api/v1/auth/password-reset/confirm", {
      method: "POST",
      json: { email, code, newPassword: "a brand new password" },
    });
    expect(confirm.status).toBe(200);
    // Sent: the row keeps its envelope, and its body (which carried the code) is gone.
    const [row] =
      await db.sql`select sent_at, text_body, html_body, attempts from mail_outbox where to_address = ${email}
        and subject ~ 'reset'`;
    expect(row!.sent_at).not.toBeNull();
    expect(row!.text_body).toBeNull();
    expect(row!.html_body).toBeNull();
    expect(row!.attempts).toBeGreaterThan(1);
  } finally {
    await after.stop();
  }
});

test("the mail is queued in the code's transaction: when it rolls back there is neither code nor mail", async () => {
  const s = await startTestServer(db, env(smtp.url));
  let userId: string;
  try {
    const email = await newAccount(s, "rollback");
    userId = (await db.sql`select id from users where email = ${email}`)[0]!.id;
  } finally {
    await s.stop();
  }
  const outbox = new MailQueue(db.sql, { send: async () => {}, close() {} }, () => {}, {
    retryBaseMs: 1000,
    maxAttempts: 3,
  });
  try {
    const codes = async () =>
      (await db.sql`select count(*)::int as n from account_codes where user_id = ${userId}`)[0]!.n;
    const mails = async () =>
      (await db.sql`select count(*)::int as n from mail_outbox where to_address = 'rollback@example.com'`)[0]!.n;
    const [c0, m0] = [await codes(), await mails()];
    const failed = await issueCode(
      db.sql,
      { userId, purpose: "password_reset", ttlMs: 60_000, now: new Date() },
      async (tx, code) => {
        await outbox.enqueue(tx, { to: "rollback@example.com", subject: "code", text: code, html: code });
        throw new Error("the transaction fails after the mail was queued");
      },
    ).catch((e: Error) => e);
    expect((failed as Error).message).toContain("the transaction fails");
    expect([await codes(), await mails()]).toEqual([c0, m0]);
  } finally {
    await outbox.stop();
  }
});

test("a mail whose code expired before it could be sent is abandoned, body removed, never sent", async () => {
  const sent: string[] = [];
  const lines: Record<string, unknown>[] = [];
  const outbox = new MailQueue(
    db.sql,
    { send: async (m) => void sent.push(m.to), close() {} },
    (l) => void lines.push(l),
    { retryBaseMs: 1000, maxAttempts: 3, pollMs: 50 },
  );
  try {
    await outbox.enqueue(
      db.sql,
      { to: "late@example.com", subject: "code", text: "secret", html: "secret" },
      { expiresAt: new Date(Date.now() - 1000) },
    );
    outbox.wake();
    await outbox.idle();
    const [row] =
      await db.sql`select failed_at, text_body, last_error from mail_outbox where to_address = 'late@example.com'`;
    expect(row!.failed_at).not.toBeNull();
    expect(row!.text_body).toBeNull();
    expect(row!.last_error).toContain("expired");
    expect(sent).toEqual([]);
  } finally {
    await outbox.stop();
  }
});

test("retention: account events, sent mail, finished backup runs past their settings go; the rest stays", async () => {
  const [{ id: userId }] = (await db.sql`insert into users (email, password_hash, name)
      values (${`old-${crypto.randomUUID().slice(0, 8)}@example.com`}, 'x', 'Old') returning id`) as any;
  await db.sql`insert into account_events (user_id, kind, created_at)
    values (${userId}, 'password_reset', now() - interval '400 days'), (${userId}, 'email_verified', now() -
    interval '10 days')`;
  await db.sql`insert into mail_outbox (to_address, subject, created_at, sent_at)
    values ('old-sent@example.com', 's', now() - interval '8 days', now() - interval '8 days')`;
  await db.sql`insert into mail_outbox (to_address, subject, created_at, failed_at)
    values ('old-failed@example.com', 's', now() - interval '8 days', now() - interval '8 days')`;
  await db.sql`insert into mail_outbox (to_address, subject, text_body, created_at, due_at)
    values ('old-unsent@example.com', 's', 'body', now() - interval '30 days', now() + interval '1 hour')`;
  await db.sql`insert into backup_runs (scheduled_for, host, finished_at)
    values (now() - interval '100 days', 'h', now() - interval '100 days'), (now() - interval '1 day', 'h', now() -
    interval '1 day')`;
  const keep = loadConfig({}).retention;
  expect(keep).toEqual({
    accountEventsMs: 365 * 86_400_000,
    mailOutboxMs: 7 * 86_400_000,
    backupRunsMs: 90 * 86_400_000,
    recoverRecordsMs: 90 * 86_400_000,
  });
  const gone = await pruneHistory(db.sql, keep);
  expect(gone).toEqual({ accountEvents: 1, mailOutbox: 2, backupRuns: 1 });
  expect((await db.sql`select kind from account_events where user_id = ${userId}`).map((r) => r.kind)).toEqual([
    "email_verified",
  ]);
  expect(
    (await db.sql`select to_address from mail_outbox where to_address like 'old-%'`).map((r) => r.to_address),
  ).toEqual(["old-unsent@example.com"]);
  expect((await db.sql`select count(*)::int as n from backup_runs`)[0]!.n).toBe(1);
  // 0 keeps for good.
  expect(await pruneHistory(db.sql, { accountEventsMs: 0, mailOutboxMs: 0, backupRunsMs: 0 })).toEqual({
    accountEvents: 0,
    mailOutbox: 0,
    backupRuns: 0,
  });
});
