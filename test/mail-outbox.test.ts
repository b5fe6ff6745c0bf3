import { afterAll, beforeAll, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { newAccount, startTestServer } from "./support/server.ts";
import { TestSmtp, codeIn } from "./support/smtp.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { issueCode } from "../src/auth/account-codes.ts";
import { MailQueue } from "../src/mail/queue.ts";
import { pruneHistory } from "../src/pg/history.ts";
import { loadConfig } from "../src/config/index.ts";
import { toolPath } from "../src/pg/bin.ts";

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
  // Quick retries: two tests wait for the first one after SMTP comes back.
  MAIL_RETRY_BASE: "250ms",
  PUBLIC_URL: "https://auth.shinkei.test",
  LOGIN_MAX_FAILURES_PER_IP: "100000",
  REGISTER_MAX_PER_IP: "100000",
});

/** The database as `pg_dump` writes it (what a backup holds), as text. */
async function dump(): Promise<string> {
  const p = Bun.spawn([toolPath("pg_dump"), "--no-owner", "-d", db.url], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`pg_dump failed: ${err}`);
  return out;
}

test("a reset code is in no row: not in pg_dump while its mail waits nor once sent; the mail works", async () => {
  const flaky = await TestSmtp.start();
  await flaky.stop();
  const s = await startTestServer(db, env(flaky.url));
  try {
    const email = await newAccount(s, "sealed");
    expect((await s.api("/api/v1/auth/password-reset", { method: "POST", json: { email } })).status).toBe(202);
    await s.recovery.settled();
    while (!s.logs.some((l) => l.msg === "mail not sent, will retry" && /reset/.test(String(l.subject))))
      await Bun.sleep(20);
    const whileQueued = await dump();
    // The dump does hold the queued mail: its envelope, and a sealed body.
    const [row] = await db.sql`select text_body, html_body, sealed_body from mail_outbox 
      where to_address = ${email} and subject ~ 'reset'`;
    expect([row!.text_body, row!.html_body]).toEqual([null, null]);
    expect(row!.sealed_body.length).toBeGreaterThan(100);
    expect(whileQueued).toContain(email);
    expect(whileQueued).toContain(row!.sealed_body.toString("hex"));

    await flaky.start();
    const mail = await flaky.waitFor(email, /password reset code/);
    const code = codeIn(mail);
    const afterSent = await dump();
    // Neither the code nor its bytes in hex (as a bytea is dumped), in any table.
    for (const text of [whileQueued, afterSent]) {
      expect(text).not.toContain(code);
      expect(text).not.toContain(Buffer.from(code, "base64url").toString("hex"));
    }
    const [sent] = await db.sql`select sent_at, text_body, html_body, sealed_body from mail_outbox 
      where to_address = ${email} and subject ~ 'reset'`;
    expect(sent!.sent_at).not.toBeNull();
    expect([sent!.text_body, sent!.html_body, sent!.sealed_body]).toEqual([null, null, null]);
    const confirm = await s.api("/api/v1/auth/password-reset/confirm", {
      method: "POST",
      json: { email, code, newPassword: "a brand new password" },
    });
    expect(confirm.status).toBe(200);
  } finally {
    await s.stop();
    await flaky.stop();
  }
});

test("a reset mail unsent when its server stops is dropped; plain mail waits for the next start", async () => {
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
    // A registration with the taken address: a notice to its owner, which carries no code.
    const taken = await before.api("/api/v1/auth/register", {
      method: "POST",
      json: { email, password: "another password", name: "Someone" },
    });
    expect(taken.status).toBe(409);
    await before.recovery.settled();
    while (!before.logs.some((l) => l.msg === "mail not sent, will retry" && /reset/.test(String(l.subject))))
      await Bun.sleep(20);
  } finally {
    await before.stop();
  }
  // Two mails with codes (the verification at registration, the reset) dropped; the notice kept.
  expect(before.logs.find((l) => l.msg === "mail carrying a code not sent before shutdown; dropped")?.count).toBe(2);
  expect(before.logs.find((l) => l.msg === "mail not sent before shutdown")?.count).toBe(1);
  const [dropped] = await db.sql`select failed_at, sealed_body, last_error from mail_outbox 
      where to_address = ${email} and subject ~ 'reset'`;
  expect(dropped!.failed_at).not.toBeNull();
  expect(dropped!.sealed_body).toBeNull();
  expect(dropped!.last_error).toContain("stopped first");

  // The restart, now with SMTP up: the notice goes out; the dropped reset mail never does.
  const after = await startTestServer(db, env(smtp.url));
  try {
    await smtp.waitFor(email, /Someone tried to create/);
    await after.recovery.idle();
    expect(smtp.to(email).filter((m) => /password reset code/.test(m.subject))).toEqual([]);
    // The user asks again: that code arrives and works.
    expect((await after.api("/api/v1/auth/password-reset", { method: "POST", json: { email } })).status).toBe(202);
    const code = codeIn(await smtp.waitFor(email, /password reset code/));
    const confirm = await after.api("/api/v1/auth/password-reset/confirm", {
      method: "POST",
      json: { email, code, newPassword: "a brand new password" },
    });
    expect(confirm.status).toBe(200);
    expect(smtp.to(email).filter((m) => /password reset code/.test(m.subject)).length).toBe(1);
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
    const [row] = await db.sql`select failed_at, text_body, sealed_body, last_error from mail_outbox
      where to_address = 'late@example.com'`;
    expect(row!.failed_at).not.toBeNull();
    expect(row!.text_body).toBeNull();
    expect(row!.sealed_body).toBeNull();
    expect(row!.last_error).toContain("expired");
    expect(sent).toEqual([]);
  } finally {
    await outbox.stop();
  }
});

test("sealed mail of another process is neither sent nor waited for; an altered one is dropped", async () => {
  const sent: string[] = [];
  const outbox = new MailQueue(db.sql, { send: async (m) => void sent.push(m.to), close() {} }, () => {}, {
    retryBaseMs: 1000,
    maxAttempts: 3,
    pollMs: 50,
  });
  try {
    await outbox.idle();
    // Queued by a process that has ended: its key is gone with it.
    await db.sql`insert into mail_outbox (to_address, subject, sealed_body, sealed_by, expires_at)
      values ('gone@example.com', 'code', ${Buffer.alloc(64, 7)}, 'a key that no longer exists',
              now() + interval '1.5 seconds')`;
    // Queued here, then moved to another address in the table, in one transaction: the sender, which
    // polls, never sees (and sends) the row as it was queued.
    await db.sql.begin(async (tx) => {
      await outbox.enqueue(
        tx,
        { to: "owner@example.com", subject: "code", text: "secret", html: "secret" },
        { expiresAt: new Date(Date.now() + 60_000) },
      );
      await tx`update mail_outbox set to_address = 'thief@example.com' where to_address = 'owner@example.com'`;
    });
    outbox.wake();
    const started = Date.now();
    await outbox.idle();
    expect(Date.now() - started).toBeLessThan(1000);
    const state = async (to: string) =>
      (
        await db.sql`select failed_at is not null as dropped, sealed_body is null as emptied, last_error
        from mail_outbox where to_address = ${to}`
      )[0]!;
    expect(await state("thief@example.com")).toEqual({
      dropped: true,
      emptied: true,
      last_error: "its sealed body does not open with this server's key: it was altered",
    });
    expect(await state("gone@example.com")).toMatchObject({ dropped: false, emptied: false });
    while (!(await state("gone@example.com")).dropped) await Bun.sleep(50);
    expect(await state("gone@example.com")).toEqual({
      dropped: true,
      emptied: true,
      last_error: "the code it carries expired before it could be sent",
    });
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
