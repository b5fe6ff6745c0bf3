import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { newAccount, startTestServer, testConfig, type TestServer } from "./support/server.ts";
import { TestSmtp, codeIn } from "./support/smtp.ts";
import { hashCode } from "../src/auth/account-codes.ts";
import { loadConfig } from "../src/config/index.ts";
import { ShinkeiError } from "../src/errors.ts";
import { AuthService } from "../src/auth/service.ts";
import { AccountRecovery } from "../src/auth/password-reset.ts";
import { createMailQueue } from "../src/mail/index.ts";
import { createApp } from "../server/app.ts";

let db: TestDatabase;
let smtp: TestSmtp;
let server: TestServer;
/** The recovery clock runs this far ahead of the wall clock: TTLs pass without sleeping. */
let skewMs = 0;
const clock = () => new Date(Date.now() + skewMs);

const PASSWORD = "correct horse battery";
const RESET = /password reset code/;
const CHANGED = /password was changed/;
const VERIFY = /Confirm your email/;
const DUPLICATE = /Someone tried to create/;

function mailEnv(extra: Record<string, string> = {}) {
  return {
    SMTP_URL: smtp.url,
    MAIL_FROM: "shinkei <no-reply@shinkei.test>",
    MAIL_RETRY_BASE: "100ms",
    PUBLIC_URL: "https://auth.shinkei.test",
    LOGIN_MAX_FAILURES_PER_IP: "100000",
    // Every registration here comes from loopback; the per-address limit has tests of its own.
    REGISTER_MAX_PER_IP: "100000",
    HASH_QUEUE_LIMIT: "1000",
    ...extra,
  };
}

const post = (s: TestServer, path: string, json: unknown, headers: Record<string, string> = {}) =>
  s.api(`/api/v1/auth/${path}`, { method: "POST", json, headers });

async function register(email: string, s = server) {
  const r = await post(s, "register", { email, password: PASSWORD, name: "Kim <b>Doe</b>" });
  await s.recovery.idle();
  return r;
}

async function login(email: string, password = PASSWORD, s = server) {
  return post(s, "login", { email, password });
}

async function requestReset(email: string, s = server) {
  const r = await post(s, "password-reset", { email });
  await s.recovery.idle();
  return r;
}

/** Ask for a reset and return the code from the mail that arrives (the `n`th reset mail to that address). */
async function resetCode(email: string): Promise<string> {
  const n = smtp.to(email).filter((m) => RESET.test(m.subject)).length + 1;
  expect((await requestReset(email)).status).toBe(202);
  return codeIn(await smtp.waitFor(email, RESET, n));
}

const confirm = (email: string, code: string, newPassword = "a brand new secret", s = server) =>
  post(s, "password-reset/confirm", { email, code, newPassword });

beforeAll(async () => {
  db = await freshDatabase("recovery");
  smtp = await TestSmtp.start();
  server = await startTestServer(db, mailEnv(), { clock });
});
afterAll(async () => {
  await server.stop();
  await smtp.stop();
  await db.drop();
});

describe("password reset", () => {
  test("mails a single-use code that sets the password, ends every session, is recorded and announced", async () => {
    expect((await register("carol@example.com")).status).toBe(201);
    const sessions = await Promise.all([login("carol@example.com"), login("carol@example.com")]);
    const tokens = await Promise.all(sessions.map(async (r) => (await r.json()).token as string));

    const r = await requestReset("Carol@Example.com");
    expect(r.status).toBe(202);
    expect(await r.json()).toEqual({
      status: "accepted",
      message: "If an account uses this address, a reset code is on its way.",
    });
    const mail = await smtp.waitFor("carol@example.com", RESET);
    expect(mail.raw.from?.value).toEqual([{ name: "shinkei", address: "no-reply@shinkei.test" }]);
    const code = codeIn(mail);
    expect(mail.html).toContain(code);
    expect(mail.text).toContain("https://auth.shinkei.test/api/v1/auth/password-reset/confirm");
    expect(mail.text).toContain("for 1 hour");
    // The user's name is text, never markup, in the HTML body.
    expect(mail.html).toContain("Kim &lt;b&gt;Doe&lt;/b&gt;");
    // 192 random bits, stored only as a hash.
    expect(Buffer.from(code, "base64url").length).toBe(24);
    const rows =
      await db.sql`select c.* from account_codes c join users u on u.id = c.user_id where u.email = 'carol@example.com'
        and c.purpose = 'password_reset'`;
    expect(rows.length).toBe(1);
    expect(Buffer.compare(rows[0]!.code_hash, hashCode(code))).toBe(0);
    expect(JSON.stringify(rows)).not.toContain(code);
    expect(server.logs.some((l) => JSON.stringify(l).includes(code))).toBe(false);

    const ok = await confirm("carol@example.com", code);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ revokedSessions: 2 });
    for (const token of tokens) expect((await server.api("/api/v1/auth/me", { token })).status).toBe(401);
    expect((await login("carol@example.com")).status).toBe(401);
    expect((await login("carol@example.com", "a brand new secret")).status).toBe(200);

    const again = await confirm("carol@example.com", code, "yet another secret");
    expect(again.status).toBe(400);
    expect((await again.json()).error.code).toBe("INVALID_CODE");
    expect((await login("carol@example.com", "a brand new secret")).status).toBe(200);

    const events = await db.sql`select e.kind from account_events e join users u on u.id = e.user_id
        where u.email = 'carol@example.com'`;
    expect(events.map((e) => e.kind)).toEqual(["password_reset"]);
    const notice = await smtp.waitFor("carol@example.com", CHANGED);
    expect(notice.text).toContain("with a reset code sent to this address");
    expect(notice.text).not.toContain(code);
  });

  test("a password change from a signed-in session is announced too", async () => {
    const email = await newAccount(server, "signed-in");
    const token = (await (await login(email)).json()).token;
    const r = await server.api("/api/v1/auth/password", {
      method: "POST",
      token,
      json: { currentPassword: PASSWORD, newPassword: "a second secret" },
    });
    expect(r.status).toBe(200);
    await server.recovery.idle();
    const notice = await smtp.waitFor(email, CHANGED);
    expect(notice.text).toContain("from a signed-in session");
  });

  test("a newer code leaves an older one valid; using either ends both; they expire (PASSWORD_RESET_TTL)", async () => {
    expect((await register("dave@example.com")).status).toBe(201);
    const davesCodes = async () =>
      (
        await db.sql`select count(*)::int as n from account_codes c join users u on u.id = c.user_id
          where u.email = 'dave@example.com' and c.purpose = 'password_reset'`
      )[0]!.n;
    const first = await resetCode("dave@example.com");
    const second = await resetCode("dave@example.com");
    expect(second).not.toBe(first);
    // The mail says so: a person told that asking again voids a code throws away one that works.
    const mail = await smtp.waitFor("dave@example.com", RESET, 2);
    for (const body of [mail.text, mail.html]) {
      expect(body).not.toContain("asking again makes this one stop working");
      expect(body).toContain("asking again does not stop this one");
    }
    expect(await davesCodes()).toBe(2);
    // A live code does not work for another account.
    expect((await confirm(await newAccount(server, "someone-else"), second)).status).toBe(400);
    // Anyone may ask for a code for dave: the one dave holds still works.
    expect((await confirm("dave@example.com", first, PASSWORD)).status).toBe(200);
    expect((await confirm("dave@example.com", second, PASSWORD)).status).toBe(400);
    expect(await davesCodes()).toBe(0);

    const third = await resetCode("dave@example.com");
    skewMs = 3_600_000 + 1_000;
    try {
      const late = await confirm("dave@example.com", third);
      expect(late.status).toBe(400);
      expect((await late.json()).error.code).toBe("INVALID_CODE");
      expect(await davesCodes()).toBe(1);
      // Other tests' codes may expire with it: at least this one goes.
      expect(await server.recovery.prune()).toBeGreaterThanOrEqual(1);
    } finally {
      skewMs = 0;
    }
    expect(await davesCodes()).toBe(0);
    expect((await login("dave@example.com")).status).toBe(200);
  });

  test("an unknown email gets the same status, headers and bytes, and nothing is sent", async () => {
    expect((await register("erin@example.com")).status).toBe(201);
    const before = smtp.received.length;
    const known = await requestReset("erin@example.com");
    const unknown = await requestReset("nobody-here@example.com");
    expect(unknown.status).toBe(known.status);
    expect(Buffer.from(await unknown.arrayBuffer())).toEqual(Buffer.from(await known.arrayBuffer()));
    const names = (r: Response) => [...r.headers.keys()].filter((h) => !["date", "x-request-id"].includes(h)).sort();
    expect(names(unknown)).toEqual(names(known));
    for (const h of names(known)) expect(unknown.headers.get(h)).toBe(known.headers.get(h));
    await smtp.waitFor("erin@example.com", RESET);
    expect(smtp.received.length).toBe(before + 1);
    expect(smtp.to("nobody-here@example.com")).toEqual([]);
    const [users] = await db.sql`select count(*)::int as n from users where email like 'nobody-here%'`;
    expect(users!.n).toBe(0);
  });

  test("SMTP down: the request still answers 202; the mail is retried and delivered once SMTP is back", async () => {
    expect((await register("frank@example.com")).status).toBe(201);
    // Frank's reset mail itself, by its row: another test's mail may log a retry meanwhile.
    const resetRow = async () =>
      (
        await db.sql`select attempts, sent_at, last_error from mail_outbox
          where to_address = 'frank@example.com' and subject ~ 'reset'`
      )[0];
    await smtp.stop();
    try {
      const r = await post(server, "password-reset", { email: "frank@example.com" });
      expect(r.status).toBe(202);
      const deadline = Date.now() + 20_000;
      while (!(await resetRow())?.last_error) {
        if (Date.now() > deadline) throw new Error("no failed attempt was recorded");
        await Bun.sleep(20);
      }
    } finally {
      await smtp.start();
    }
    const code = codeIn(await smtp.waitFor("frank@example.com", RESET));
    await server.recovery.idle();
    const sent = await resetRow();
    expect(sent!.sent_at).not.toBeNull();
    expect(sent!.attempts).toBeGreaterThan(1);
    expect((await confirm("frank@example.com", code)).status).toBe(200);
  });

  test("a server stopping while a mail waits out a retry stops at once and says what was not sent", async () => {
    const gone = await TestSmtp.start();
    await gone.stop();
    const email = await newAccount(server, "shutdown");
    const s = await startTestServer(db, { ...mailEnv(), SMTP_URL: gone.url, MAIL_RETRY_BASE: "1h" });
    expect((await post(s, "password-reset", { email })).status).toBe(202);
    await s.recovery.settled();
    while (!s.logs.some((l) => l.msg === "mail not sent, will retry")) await Bun.sleep(20);
    await s.stop(); // a retry an hour away must not hold the shutdown (the test's timeout would fail it)
    // Its code was sealed with the stopped process's key: dropped, not left queued.
    expect(s.logs.find((l) => l.msg === "mail carrying a code not sent before shutdown; dropped")).toMatchObject({
      count: 1,
    });
    expect(s.logs.find((l) => l.msg === "mail not sent before shutdown")).toBeUndefined();
  });

  test("malformed bodies get 400 with the field named, and nothing is stored or sent", async () => {
    await server.recovery.idle(); // mail still on its way from elsewhere must not count here
    const before = {
      mails: smtp.received.length,
      codes: (await db.sql`select count(*)::int as n from account_codes`)[0]!.n,
    };
    const cases: [string, unknown, string][] = [
      ["password-reset", {}, "email"],
      ["password-reset", { email: "not-an-email" }, "email"],
      ["password-reset", { email: "carol@example.com", admin: true }, "admin"],
      [
        "password-reset/confirm",
        { email: "carol@example.com", code: "x".repeat(129), newPassword: "long enough" },
        "code",
      ],
      [
        "password-reset/confirm",
        { email: "carol@example.com", code: "A".repeat(32), newPassword: "short" },
        "newPassword",
      ],
      ["password-reset/confirm", { email: "carol@example.com", code: 42, newPassword: "long enough" }, "code"],
      ["verify-email", { email: "carol@example.com" }, "code"],
      ["verify-email/resend", { email: ["carol@example.com"] }, "email"],
    ];
    for (const [path, json, field] of cases) {
      const r = await post(server, path, json);
      expect(r.status).toBe(400);
      expect((await r.json()).error.fields[field]).toBeString();
    }
    const text = await server.api("/api/v1/auth/password-reset", {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "carol@example.com",
    });
    expect(text.status).toBe(415);
    await server.recovery.idle();
    expect(smtp.received.length).toBe(before.mails);
    expect((await db.sql`select count(*)::int as n from account_codes`)[0]!.n).toBe(before.codes);
  });

  test("reset requests are throttled per address asked for, known or not", async () => {
    expect((await register("gina@example.com")).status).toBe(201);
    for (const email of ["gina@example.com", "ghost-gina@example.com"]) {
      for (let i = 0; i < 5; i++) expect((await requestReset(email)).status).toBe(202);
      const blocked = await requestReset(email.toUpperCase());
      expect(blocked.status).toBe(429);
      expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(0);
      expect((await blocked.json()).error.code).toBe("TOO_MANY_REQUESTS");
    }
    expect(smtp.to("gina@example.com").filter((m) => RESET.test(m.subject)).length).toBe(5);
  });

  test("wrong codes count as failures: after five, even the right code is refused for the window", async () => {
    expect((await register("hal@example.com")).status).toBe(201);
    const code = await resetCode("hal@example.com");
    for (const wrong of [
      "x",
      "A".repeat(32),
      code.slice(1) + "A",
      code.toLowerCase() === code ? code.toUpperCase() : code.toLowerCase(),
      "B".repeat(32),
    ]) {
      const r = await confirm("hal@example.com", wrong);
      expect(r.status).toBe(400);
      expect((await r.json()).error.code).toBe("INVALID_CODE");
    }
    const blocked = await confirm("hal@example.com", code);
    expect(blocked.status).toBe(429);
    expect((await login("hal@example.com")).status).toBe(200); // the password did not change
  });

  test("requests and confirms are throttled per client address, across accounts", async () => {
    const strict = await startTestServer(db, mailEnv({ TRUST_PROXY: "true", LOGIN_MAX_FAILURES_PER_IP: "3" }), {
      clock,
    });
    try {
      const from = { "x-forwarded-for": "203.0.113.77" };
      for (let i = 0; i < 3; i++)
        expect((await post(strict, "password-reset", { email: `spray${i}@example.com` }, from)).status).toBe(202);
      expect((await post(strict, "password-reset", { email: "spray9@example.com" }, from)).status).toBe(429);
      expect(
        (
          await post(
            strict,
            "password-reset/confirm",
            { email: "x@example.com", code: "A".repeat(32), newPassword: "whatever123" },
            from,
          )
        ).status,
      ).toBe(429);
      // Another address is not affected.
      expect(
        (await post(strict, "password-reset", { email: "spray9@example.com" }, { "x-forwarded-for": "203.0.113.78" }))
          .status,
      ).toBe(202);
    } finally {
      await strict.stop();
    }
  });
});

/**
 * The app in this process, its password checks held at will: a check that passed waits at the
 * gate until the test opens it, so a reset can land exactly between a check and what follows it.
 */
function heldApp() {
  const config = testConfig(db, mailEnv());
  const auth = new AuthService(db.sql, config);
  const mail = createMailQueue(config.mail, db.sql, () => {});
  const { hasher, throttle, sessions } = auth;
  const recovery = new AccountRecovery({ sql: db.sql, config, throttle, hasher, sessions, mail, log: () => {} });
  const app = createApp({ sql: db.sql, config, auth, recovery, log: () => {} });
  const verify = hasher.verify.bind(hasher);
  return {
    post: (path: string, json: unknown, token?: string) =>
      app.request(`/api/v1/auth/${path}`, {
        method: "POST",
        body: JSON.stringify(json),
        headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      }),
    me: (token: string) => app.request("/api/v1/auth/me", { headers: { authorization: `Bearer ${token}` } }),
    recovery,
    /** The next password check waits, once it has passed, until `open()`; `checked` resolves when it has. */
    hold() {
      let open!: () => void;
      let checked!: () => void;
      const gate = new Promise<void>((r) => (open = r));
      const passed = new Promise<void>((r) => (checked = r));
      hasher.verify = async (password, hash) => {
        hasher.verify = verify;
        const ok = await verify(password, hash);
        checked();
        await gate;
        return ok;
      };
      return { open, checked: passed };
    },
    async stop() {
      await recovery.idle();
      await mail?.stop();
      await throttle.stop();
    },
  };
}

describe("a reset that lands while the old password is being checked", () => {
  test("a login that checked the old password before the reset committed gets no session", async () => {
    const s = heldApp();
    try {
      const email = await newAccount(server, "login-race");
      const code = await resetCode(email);
      const held = s.hold();
      const attacker = s.post("login", { email, password: PASSWORD });
      await held.checked;
      expect((await s.post("password-reset/confirm", { email, code, newPassword: "the owner's own" })).status).toBe(
        200,
      );
      held.open();
      const r = await attacker;
      const { token } = (await r.clone().json()) as { token?: string };
      if (token) expect((await s.me(token)).status).toBe(401);
      expect(r.status).toBe(401);
      expect((await s.post("login", { email, password: "the owner's own" })).status).toBe(200);
    } finally {
      await s.stop();
    }
  });
  test("a password change whose hash a login rehashed meanwhile (the same password) still goes through", async () => {
    const s = heldApp();
    try {
      const email = await newAccount(server, "change-rehash");
      const token = (await (await s.post("login", { email, password: PASSWORD })).json()).token as string;
      const held = s.hold();
      const change = s.post("password", { currentPassword: PASSWORD, newPassword: "a new one entirely" }, token);
      await held.checked;
      // A login rehashes the same password (new hashing settings): the hash differs, the password not.
      const rehashed = await Bun.password.hash(PASSWORD, { algorithm: "argon2id", memoryCost: 4096, timeCost: 2 });
      await db.sql`update users set password_hash = ${rehashed} where email = ${email}`;
      held.open();
      expect((await change).status).toBe(200);
      expect((await s.post("login", { email, password: "a new one entirely" })).status).toBe(200);
    } finally {
      await s.stop();
    }
  });

  test("a password change from a session the reset ended, checked before it, sets no password", async () => {
    const s = heldApp();
    try {
      const email = await newAccount(server, "change-race");
      const token = (await (await s.post("login", { email, password: PASSWORD })).json()).token as string;
      const code = await resetCode(email);
      const held = s.hold();
      const change = s.post("password", { currentPassword: PASSWORD, newPassword: "the attacker's own" }, token);
      await held.checked;
      const reset = await s.post("password-reset/confirm", { email, code, newPassword: "the owner's own" });
      expect(reset.status).toBe(200);
      held.open();
      expect((await change).status).toBe(401);
      expect((await s.post("login", { email, password: "the attacker's own" })).status).toBe(401);
      expect((await s.post("login", { email, password: "the owner's own" })).status).toBe(200);
    } finally {
      await s.stop();
    }
  });
});

describe("nobody who knows an email can block its owner's reset", () => {
  const ATTACKER = "198.51.100.66";
  const OWNER = "203.0.113.10";
  const from = (ip: string) => ({ "x-forwarded-for": ip });
  let proxied: TestServer;
  beforeAll(async () => {
    proxied = await startTestServer(
      db,
      mailEnv({ TRUST_PROXY: "true", LOGIN_MAX_FAILURES_PER_ACCOUNT: "6", LOGIN_ACCOUNT_DELAY: "300ms" }),
      { clock },
    );
  });
  afterAll(() => proxied.stop());
  const ask = async (email: string, ip: string) => {
    const r = await post(proxied, "password-reset", { email }, from(ip));
    await proxied.recovery.idle();
    return r;
  };

  test("requests from many addresses past the per-email ceiling only slow the owner's; the codes work", async () => {
    expect((await register("olga@example.com", proxied)).status).toBe(201);
    // 4 addresses x 3 requests: past the ceiling of 6 for the email, far under each address's 5.
    for (let a = 0; a < 4; a++)
      for (let i = 0; i < 3; i++) expect((await ask("olga@example.com", `198.51.100.${a + 1}`)).status).toBe(202);
    const started = performance.now();
    const own = await ask("olga@example.com", OWNER);
    expect(own.status).toBe(202);
    expect(performance.now() - started).toBeGreaterThanOrEqual(290);
    // At most five codes live at once, so at most five mails: every one of them works for the owner.
    const mails = smtp.to("olga@example.com").filter((m) => RESET.test(m.subject));
    expect(mails.length).toBe(5);
    const r = await post(
      proxied,
      "password-reset/confirm",
      { email: "olga@example.com", code: codeIn(mails[0]!), newPassword: "olga's new secret" },
      from(OWNER),
    );
    expect(r.status).toBe(200);
  });

  test("wrong codes from one address never block the right one from another; a new request keeps codes", async () => {
    expect((await register("pia@example.com", proxied)).status).toBe(201);
    expect((await ask("pia@example.com", OWNER)).status).toBe(202);
    const code = codeIn(await smtp.waitFor("pia@example.com", RESET, 1));
    expect((await ask("pia@example.com", ATTACKER)).status).toBe(202);
    await smtp.waitFor("pia@example.com", RESET, 2);
    let refused = 0;
    for (let i = 0; i < 8; i++) {
      const r = await post(
        proxied,
        "password-reset/confirm",
        { email: "pia@example.com", code: "C".repeat(31) + i, newPassword: "whatever123" },
        from(ATTACKER),
      );
      refused += r.status === 429 ? 1 : 0;
    }
    expect(refused).toBe(3); // the attacker's address is stopped after its five
    const r = await post(
      proxied,
      "password-reset/confirm",
      { email: "pia@example.com", code, newPassword: "pia's new secret" },
      from(OWNER),
    );
    expect(r.status).toBe(200);
    expect(
      (await post(proxied, "login", { email: "pia@example.com", password: "pia's new secret" }, from(OWNER))).status,
    ).toBe(200);
  });
});

describe("email verification", () => {
  test("not required: registration mails a code, login works before it, the code verifies once", async () => {
    expect((await register("ivy@example.com")).status).toBe(201);
    const code = codeIn(await smtp.waitFor("ivy@example.com", VERIFY));
    expect((await login("ivy@example.com")).status).toBe(200);
    const wrong = await post(server, "verify-email", { email: "ivy@example.com", code: "C".repeat(32) });
    expect(wrong.status).toBe(400);
    expect((await post(server, "verify-email", { email: "carol@example.com", code })).status).toBe(400);
    const ok = await post(server, "verify-email", { email: "ivy@example.com", code });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ verified: true });
    expect((await post(server, "verify-email", { email: "ivy@example.com", code })).status).toBe(400);
    const [row] = await db.sql`select email_verified_at from users where email = 'ivy@example.com'`;
    expect(row!.email_verified_at).toBeInstanceOf(Date);
  });

  test("required: register answers 202 for new and taken addresses; unverified login 403 only if right", async () => {
    const existing = await newAccount(server, "taken");
    const strict = await startTestServer(db, mailEnv({ REQUIRE_EMAIL_VERIFICATION: "true" }), { clock });
    try {
      const fresh = await register("jo@example.com", strict);
      const taken = await register(existing.toUpperCase(), strict);
      expect(fresh.status).toBe(202);
      expect(taken.status).toBe(202);
      expect(Buffer.from(await taken.arrayBuffer())).toEqual(Buffer.from(await fresh.arrayBuffer()));
      const [n] = await db.sql`select count(*)::int as n from users where lower(email) = ${existing}`;
      expect(n!.n).toBe(1);

      expect((await login("jo@example.com", "not the password", strict)).status).toBe(401);
      const unverified = await login("jo@example.com", PASSWORD, strict);
      expect(unverified.status).toBe(403);
      expect((await unverified.json()).error.code).toBe("EMAIL_NOT_VERIFIED");

      // The first code got lost: ask for a new one, which works; using it ends the older one too.
      const lost = codeIn(await smtp.waitFor("jo@example.com", VERIFY));
      expect((await post(strict, "verify-email/resend", { email: "jo@example.com" })).status).toBe(202);
      await strict.recovery.idle();
      const code = codeIn(await smtp.waitFor("jo@example.com", VERIFY, 2));
      expect((await post(strict, "verify-email", { email: "jo@example.com", code })).status).toBe(200);
      expect((await post(strict, "verify-email", { email: "jo@example.com", code: lost })).status).toBe(400);
      expect((await login("jo@example.com", PASSWORD, strict)).status).toBe(200);
      // A verified account gets no more codes.
      expect((await post(strict, "verify-email/resend", { email: "jo@example.com" })).status).toBe(202);
      await strict.recovery.idle();
      expect(smtp.to("jo@example.com").filter((m) => VERIFY.test(m.subject)).length).toBe(2);
    } finally {
      await strict.stop();
    }
  });
});

describe("duplicate registration", () => {
  test("409 without required verification; the owner is told at most once a day, with the way back in", async () => {
    expect((await register("kai@example.com")).status).toBe(201);
    for (let i = 0; i < 3; i++) {
      const r = await register(i % 2 ? "KAI@example.com" : "kai@example.com");
      expect(r.status).toBe(409);
      expect((await r.json()).error.code).toBe("EMAIL_TAKEN");
    }
    const notice = await smtp.waitFor("kai@example.com", DUPLICATE);
    expect(notice.text).toContain("POST https://auth.shinkei.test/api/v1/auth/password-reset");
    expect(notice.text).toContain("No second account was created");
    expect(smtp.to("kai@example.com").filter((m) => DUPLICATE.test(m.subject)).length).toBe(1);

    skewMs = 86_400_000 + 60_000;
    try {
      expect((await register("kai@example.com")).status).toBe(409);
      await smtp.waitFor("kai@example.com", DUPLICATE, 2);
    } finally {
      skewMs = 0;
    }
  });
});

describe("without SMTP_URL", () => {
  test("outside development the mail routes answer 503 MAIL_DISABLED, and the server says so at start", async () => {
    const off = await startTestServer(db, { SHINKEI_ENV: "production", REGISTER_MAX_PER_IP: "100000" });
    const strict = await startTestServer(db, {
      SHINKEI_ENV: "production",
      REQUIRE_EMAIL_VERIFICATION: "true",
      REGISTER_MAX_PER_IP: "100000",
    });
    try {
      expect(off.logs.some((l) => String(l.msg).startsWith("mail is off"))).toBe(true);
      for (const [path, json] of [
        ["password-reset", { email: "carol@example.com" }],
        ["password-reset/confirm", { email: "carol@example.com", code: "A".repeat(32), newPassword: "whatever123" }],
        ["verify-email", { email: "carol@example.com", code: "A".repeat(32) }],
        ["verify-email/resend", { email: "carol@example.com" }],
      ] as const) {
        const r = await post(off, path, json);
        expect(r.status).toBe(503);
        expect((await r.json()).error.code).toBe("MAIL_DISABLED");
      }
      // Registration needs mail only when verification is required.
      expect((await register("lee@example.com", off)).status).toBe(201);
      const refused = await register("lou@example.com", strict);
      expect(refused.status).toBe(503);
      expect((await refused.json()).error.code).toBe("MAIL_DISABLED");
      const [n] = await db.sql`select count(*)::int as n from users where email = 'lou@example.com'`;
      expect(n!.n).toBe(0);
    } finally {
      await off.stop();
      await strict.stop();
    }
  });

  test("in development the message goes to the log, so a reset works end to end with zero setup", async () => {
    const email = await newAccount(server, "dev-log");
    const dev = await startTestServer(db, { SHINKEI_ENV: "development" });
    try {
      expect(dev.logs.some((l) => String(l.msg).startsWith("mail goes to the log"))).toBe(true);
      expect((await requestReset(email, dev)).status).toBe(202);
      const line = dev.logs.find((l) => l.to === email && RESET.test(String(l.subject)));
      const code = /^ {4}([A-Za-z0-9_-]{32})$/m.exec(String(line?.text))![1]!;
      expect((await confirm(email, code, "from the log 123", dev)).status).toBe(200);
      expect((await login(email, "from the log 123")).status).toBe(200);
    } finally {
      await dev.stop();
    }
  });

  test("SMTP_URL, MAIL_FROM and the TTLs are checked at start", () => {
    for (const [name, value] of [
      ["SMTP_URL", "http://mail.example.com"],
      ["SMTP_URL", "smtp://"],
      ["MAIL_FROM", "not an address"],
      ["PASSWORD_RESET_TTL", "soon"],
    ] as const) {
      const error = (() => {
        try {
          loadConfig({ [name]: value });
        } catch (e) {
          return e;
        }
      })();
      expect(error).toBeInstanceOf(ShinkeiError);
      expect((error as ShinkeiError).message).toStartWith(name);
    }
    const c = loadConfig({ SMTP_URL: "smtps://user:pw@smtp.example.com", REQUIRE_EMAIL_VERIFICATION: "yes" });
    expect(c.mail.mode).toBe("smtp");
    expect(c.recovery).toEqual({
      passwordResetTtlMs: 3_600_000,
      verificationTtlMs: 86_400_000,
      requireEmailVerification: true,
    });
    expect(loadConfig({ SHINKEI_ENV: "production" }).mail.mode).toBe("off");
  });
});
