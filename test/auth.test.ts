import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { newAccount, startTestServer, type TestServer } from "./support/server.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { migrations } from "../src/migrations/index.ts";

let db: TestDatabase;
let server: TestServer;

async function counts() {
  const [row] = await db.sql`select
    (select count(*) from users) as users, (select count(*) from sessions) as sessions,
    (select count(*) from worlds) as worlds, (select count(*) from stories) as stories,
    (select count(*) from story_beats) as story_beats`;
  return row;
}

async function register(email: string, password = "correct horse battery", name = "Test User") {
  return server.api("/api/v1/auth/register", { method: "POST", json: { email, password, name } });
}

async function login(email: string, password = "correct horse battery") {
  return server.api("/api/v1/auth/login", { method: "POST", json: { email, password } });
}

async function tokenFor(email: string, password?: string): Promise<string> {
  const r = await login(email, password);
  expect(r.status).toBe(200);
  return (await r.json()).token;
}

beforeAll(async () => {
  db = await freshDatabase("auth");
  server = await startTestServer(db, {
    LOGIN_MAX_FAILURES_PER_IP: "100000",
    HASH_QUEUE_LIMIT: "1000",
    REGISTER_MAX_PER_IP: "100000",
    REGISTER_HASH_QUEUE_LIMIT: "1000",
  });
});
afterAll(async () => {
  await server.stop();
  await db.drop();
});

describe("register", () => {
  test("creates the account and never returns the hash; the same email in any case is 409", async () => {
    const r = await register("Ada@Example.com");
    expect(r.status).toBe(201);
    const body = await r.json();
    expect(Object.keys(body.user).sort()).toEqual(["createdAt", "email", "id", "name"]);
    expect(JSON.stringify(body)).not.toContain("argon2");
    const again = await register("  ada@EXAMPLE.com ");
    expect(again.status).toBe(409);
    expect((await again.json()).error.code).toBe("EMAIL_TAKEN");
  });

  test("50 parallel registrations of one email in mixed case: exactly one 201", async () => {
    const variants = Array.from({ length: 50 }, (_, i) => (i % 2 ? "race@example.com" : "RACE@Example.COM"));
    const statuses = await Promise.all(variants.map((e) => register(e).then((r) => r.status)));
    expect(statuses.filter((s) => s === 201).length).toBe(1);
    expect(statuses.filter((s) => s === 409).length).toBe(49);
    const [n] = await db.sql`select count(*) as n from users where lower(email) = 'race@example.com'`;
    expect(n!.n).toBe(1);
  });

  test("password and email rules are checked before anything is stored", async () => {
    const before = await counts();
    for (const [email, password, field] of [
      ["short@example.com", "short", "password"],
      ["long@example.com", "x".repeat(257), "password"],
      ["not-an-email", "long enough password", "email"],
      [`${"a".repeat(250)}@x.io`, "long enough password", "email"],
    ] as const) {
      const r = await register(email, password);
      expect(r.status).toBe(400);
      expect((await r.json()).error.fields[field]).toBeString();
    }
    expect(await counts()).toEqual(before);
  });
});

describe("login", () => {
  beforeAll(async () => {
    expect((await register("grace@example.com")).status).toBe(201);
  });

  test("an unknown email is 401 and creates no row; 200 of them in parallel still none", async () => {
    const before = await counts();
    const one = await login("nobody@example.com");
    expect(one.status).toBe(401);
    expect(await one.json()).toEqual({ error: { code: "INVALID_CREDENTIALS", message: "invalid email or password" } });
    const statuses = await Promise.all(
      Array.from({ length: 200 }, (_, i) => login(`ghost${i}@example.com`).then((r) => r.status)),
    );
    expect(statuses.every((s) => s === 401)).toBe(true);
    expect(await counts()).toEqual(before);
    const [ghost] = await db.sql`select count(*) as n from users where email like 'ghost%' or email like 'nobody%'`;
    expect(ghost!.n).toBe(0);
  });

  test("email in another letter case works; a wrong password gets the same answer as an unknown email", async () => {
    const ok = await login("GRACE@example.com");
    expect(ok.status).toBe(200);
    const body = await ok.json();
    expect(body.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(body.user.email).toBe("grace@example.com");
    expect(new Date(body.expiresAt).getTime()).toBeGreaterThan(Date.now() + 29 * 86_400_000);
    const cookie = ok.headers.get("set-cookie")!;
    expect(cookie).toContain("shinkei_session=");
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("SameSite=Lax");
    const wrong = await login("grace@example.com", "not the password");
    expect(wrong.status).toBe(401);
    expect(await wrong.json()).toEqual({
      error: { code: "INVALID_CREDENTIALS", message: "invalid email or password" },
    });
  });

  test("the session cookie authenticates like the bearer token", async () => {
    const ok = await login("grace@example.com");
    const cookie = ok.headers.get("set-cookie")!.split(";")[0]!;
    const me = await server.api("/api/v1/auth/me", { headers: { cookie } });
    expect(me.status).toBe(200);
    expect((await me.json()).user.email).toBe("grace@example.com");
  });

  test("tokens are stored only as hashes", async () => {
    const token = await tokenFor("grace@example.com");
    const rows =
      await db.sql`select count(*) as n from sessions where encode(token_hash, 'escape') like ${"%" + token + "%"}`;
    expect(rows[0]!.n).toBe(0);
    expect(server.logs.some((l) => JSON.stringify(l).includes(token))).toBe(false);
    expect(server.logs.some((l) => JSON.stringify(l).includes("correct horse"))).toBe(false);
  });
});

describe("throttling", () => {
  test("failed logins per account from one address: 429 with Retry-After, even for the right password", async () => {
    expect((await register("locked@example.com")).status).toBe(201);
    for (let i = 0; i < 5; i++) expect((await login("locked@example.com", "wrong password!")).status).toBe(401);
    const blocked = await login("locked@example.com");
    expect(blocked.status).toBe(429);
    expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(0);
    expect((await blocked.json()).error.code).toBe("TOO_MANY_REQUESTS");
    // Unknown emails are throttled alike, so a lockout says nothing about whether an account exists.
    for (let i = 0; i < 5; i++) expect((await login("unknown-locked@example.com")).status).toBe(401);
    expect((await login("unknown-locked@example.com")).status).toBe(429);
  });

  test("failed logins per client address are limited, across accounts, and survive a restart", async () => {
    // Every test here logs in from 127.0.0.1; behind a trusted proxy this test has addresses of its own.
    const strictEnv = { LOGIN_MAX_FAILURES_PER_IP: "3", TRUST_PROXY: "true" };
    // An IPv6 client counts by its /64: each test address is a /64 of its own.
    const address = `2001:db8:${crypto.randomUUID().slice(0, 4)}::1`;
    const spray = (s: TestServer, i: number, from = address) =>
      s.api("/api/v1/auth/login", {
        method: "POST",
        headers: { "x-forwarded-for": from },
        json: { email: `spray${i}@example.com`, password: "whatever1" },
      });
    const first = await startTestServer(db, strictEnv);
    try {
      for (let i = 0; i < 3; i++) expect((await spray(first, i)).status).toBe(401);
      expect((await spray(first, 3)).status).toBe(429);
    } finally {
      await first.stop();
    }
    // The counter lives in PostgreSQL: a restarted server still refuses that address, and only that one.
    const restarted = await startTestServer(db, strictEnv);
    try {
      expect((await spray(restarted, 4)).status).toBe(429);
      expect((await spray(restarted, 5, `2001:db8:${crypto.randomUUID().slice(0, 4)}:1::1`)).status).toBe(401);
    } finally {
      await restarted.stop();
    }
  });
});

describe("sessions", () => {
  test("logout revokes this session only", async () => {
    const email = await newAccount(server, "logout");
    const a = await tokenFor(email);
    const b = await tokenFor(email);
    expect((await server.api("/api/v1/auth/logout", { method: "POST", token: a })).status).toBe(200);
    expect((await server.api("/api/v1/auth/me", { token: a })).status).toBe(401);
    expect((await server.api("/api/v1/auth/me", { token: b })).status).toBe(200);
  });

  test("logout-all revokes every session of the user", async () => {
    const email = await newAccount(server, "logout-all");
    const a = await tokenFor(email);
    const b = await tokenFor(email);
    const r = await server.api("/api/v1/auth/logout-all", { method: "POST", token: a });
    expect((await r.json()).revoked).toBe(2);
    expect((await server.api("/api/v1/auth/me", { token: a })).status).toBe(401);
    expect((await server.api("/api/v1/auth/me", { token: b })).status).toBe(401);
  });

  test("a password change revokes the other sessions and keeps this one", async () => {
    const email = await newAccount(server, "change");
    const a = await tokenFor(email);
    const b = await tokenFor(email);
    const wrong = await server.api("/api/v1/auth/password", {
      method: "POST",
      token: a,
      json: { currentPassword: "nope nope", newPassword: "a brand new secret" },
    });
    expect(wrong.status).toBe(401);
    const r = await server.api("/api/v1/auth/password", {
      method: "POST",
      token: a,
      json: { currentPassword: "correct horse battery", newPassword: "a brand new secret" },
    });
    expect(r.status).toBe(200);
    expect((await r.json()).revokedSessions).toBe(1);
    expect((await server.api("/api/v1/auth/me", { token: a })).status).toBe(200);
    expect((await server.api("/api/v1/auth/me", { token: b })).status).toBe(401);
    expect((await login(email)).status).toBe(401);
    expect((await login(email, "a brand new secret")).status).toBe(200);
  });

  test("a session revoked on another replica stops working within SESSION_CACHE_TTL", async () => {
    const t = await tokenFor(await newAccount(server, "replica"));
    const other = await startTestServer(db, { SESSION_CACHE_TTL: "300ms" });
    try {
      expect((await other.api("/api/v1/auth/me", { token: t })).status).toBe(200); // now cached there
      expect((await server.api("/api/v1/auth/logout", { method: "POST", token: t })).status).toBe(200);
      expect((await server.api("/api/v1/auth/me", { token: t })).status).toBe(401); // at once where it was revoked
      await Bun.sleep(350);
      expect((await other.api("/api/v1/auth/me", { token: t })).status).toBe(401);
    } finally {
      await other.stop();
    }
  });

  test("an expired session is refused", async () => {
    const email = await newAccount(server, "expired");
    const t = await tokenFor(email);
    await db.sql`update sessions set expires_at = now() - interval '1 second' where user_id = (select id from users
      where email = ${email})`;
    const r = await server.api("/api/v1/auth/me", { token: t });
    expect(r.status).toBe(401);
    expect((await r.json()).error.code).toBe("UNAUTHORIZED");
  });

  test("worlds lists the user's own worlds with story counts", async () => {
    const email = await newAccount(server, "worlds");
    const t = await tokenFor(email);
    const [owner] = await db.sql`select id from users where email = ${email}`;
    const [other] = await db.sql`select id from users where email = ${await newAccount(server, "not-yours")}`;
    const [w] = await db.sql`insert into worlds (owner_id, name) values (${owner!.id}, 'Earthsea') returning id`;
    await db.sql`insert into worlds (owner_id, name) values (${other!.id}, 'Not yours')`;
    await db.sql`insert into stories (world_id, title) values (${w!.id}, 'One'), (${w!.id}, 'Two')`;
    const r = await server.api("/api/v1/worlds", { token: t });
    const body = await r.json();
    expect(body.worlds.map((x: { name: string; storyCount: number }) => [x.name, x.storyCount])).toEqual([
      ["Earthsea", 2],
    ]);
  });
});

describe("health", () => {
  test("/health and /ready", async () => {
    expect(await (await server.api("/health")).json()).toEqual({ status: "ok" });
    const ready = await server.api("/ready");
    expect(ready.status).toBe(200);
    expect((await ready.json()).schemaVersion).toBe(migrations.at(-1)!.version);
  });

  test("/ready is 503 while migrations are pending", async () => {
    const bare = await freshDatabase("auth_bare");
    const s = await startTestServer(bare, { MIGRATE_ON_START: "false" });
    try {
      const r = await s.api("/ready");
      expect(r.status).toBe(503);
      expect((await r.json()).pendingMigrations).toBe(migrations.length);
      await migrate(bare.sql);
      expect((await s.api("/ready")).status).toBe(200);
    } finally {
      await s.stop();
      await bare.drop();
    }
  });

  test("every response carries a request id and security headers; one log line per request", async () => {
    const r = await server.api("/health", { headers: { "x-request-id": "trace-123" } });
    expect(r.headers.get("x-request-id")).toBe("trace-123");
    expect(r.headers.get("x-content-type-options")).toBe("nosniff");
    // A passing probe is not logged by default (ACCESS_LOG_PROBES); other requests are.
    expect(server.logs.find((l) => l.requestId === "trace-123")).toBeUndefined();
    await server.api("/api/v1/auth/me", { headers: { "x-request-id": "trace-124" } });
    expect(server.logs.find((l) => l.requestId === "trace-124")).toMatchObject({
      msg: "request",
      method: "GET",
      path: "/api/v1/auth/me",
      status: 401,
    });
    const evil = await server.api("/health", { headers: { "x-request-id": "bad id; with <html>" } });
    const made = evil.headers.get("x-request-id")!;
    expect(made).toMatch(/^[A-Za-z0-9_-]{8}-[0-9a-z]+$/);
    expect((await server.api("/health")).headers.get("x-request-id")).not.toBe(made);
    expect(r.headers.get("cache-control")).toBe("no-store");
    for (const h of ["strict-transport-security", "x-frame-options", "content-security-policy"])
      expect(r.headers.get(h)).toBeString();
  });
});
