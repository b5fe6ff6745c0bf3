import { afterAll, beforeAll, beforeEach, describe, expect, test, setDefaultTimeout } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { type TestServer, withServer as withServerOn } from "./support/server.ts";
import { migrate } from "../src/migrations/migrate.ts";

// Real databases, listeners and argon2: 5 s is too tight on a busy 2-core machine.
setDefaultTimeout(120_000);

const PASSWORD = "correct horse battery";
let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase("hashing");
  await migrate(db.sql);
});
afterAll(() => db.drop());
beforeEach(async () => {
  await db.sql`delete from login_throttle`;
});

const withServer = (env: Record<string, string>, fn: (s: TestServer) => Promise<void>) => withServerOn(db, env, fn);
const register = (s: TestServer, email: string) =>
  s.api("/api/v1/auth/register", { method: "POST", json: { email, password: PASSWORD, name: "T" } });
const login = (s: TestServer, email: string, password = PASSWORD) =>
  s.api("/api/v1/auth/login", { method: "POST", json: { email, password } });
const storedHash = async (email: string) =>
  (await db.sql`select password_hash from users where email = ${email}`)[0]!.password_hash as string;

describe("registration", () => {
  test("is limited per address: past REGISTER_MAX_PER_IP it answers 429 with Retry-After, nothing stored", async () => {
    await withServer({ REGISTER_MAX_PER_IP: "3" }, async (s) => {
      for (let i = 0; i < 3; i++) expect((await register(s, `signup${i}@example.com`)).status).toBe(201);
      const r = await register(s, "signup3@example.com");
      expect(r.status).toBe(429);
      expect(Number(r.headers.get("retry-after"))).toBeGreaterThan(0);
      expect((await r.json()).error.code).toBe("TOO_MANY_REQUESTS");
      expect((await db.sql`select count(*) as n from users where email = 'signup3@example.com'`)[0]!.n).toBe(0);
      // Logins from the same address have limits of their own.
      expect((await login(s, "signup0@example.com")).status).toBe(200);
    });
  });

  test("a registration flood fills only its own hash queue: logins keep answering", async () => {
    // Small queues and slow-enough hashes, so 24 registrations at a time overflow a queue for certain.
    const env = {
      ARGON2_MEMORY_KIB: "16384",
      ARGON2_TIME_COST: "2",
      HASH_CONCURRENCY: "1",
      HASH_QUEUE_LIMIT: "2",
      REGISTER_HASH_CONCURRENCY: "1",
      REGISTER_HASH_QUEUE_LIMIT: "2",
      REGISTER_MAX_PER_IP: "100000",
    };
    await withServer(env, async (s) => {
      expect((await register(s, "steady@example.com")).status).toBe(201);
      let done = false;
      let sent = 0;
      const flood: number[] = [];
      // 24 loops of registrations, 600 at most in all, for as long as the logins below take.
      const workers = Array.from({ length: 24 }, async () => {
        while (!done && sent < 600) {
          const n = sent++;
          flood.push((await register(s, `flood${n}@example.com`)).status);
        }
      });
      await Bun.sleep(50);
      const logins: number[] = [];
      try {
        for (let i = 0; i < 5; i++) logins.push((await login(s, "steady@example.com")).status);
      } finally {
        done = true;
        await Promise.all(workers);
      }
      expect(flood).toContain(503); // the flood did overflow its queue...
      expect(logins).toEqual([200, 200, 200, 200, 200]); // ...and no login was turned away
    });
  });
});

describe("overload", () => {
  test("a login flood past what HASH_WAIT_BUDGET clears is shed: 503 BUSY, though under HASH_QUEUE_LIMIT", async () => {
    const env = {
      ARGON2_MEMORY_KIB: "16384",
      ARGON2_TIME_COST: "2",
      HASH_CONCURRENCY: "1",
      HASH_WAIT_BUDGET: "200ms",
      LOGIN_MAX_FAILURES: "1000",
      LOGIN_MAX_FAILURES_PER_IP: "100000",
    };
    await withServer(env, async (s) => {
      expect((await register(s, "flooded@example.com")).status).toBe(201);
      // One login times the hash; the 100 at once then overflow a queue sized from it.
      expect((await login(s, "flooded@example.com")).status).toBe(200);
      const answers = await Promise.all(
        Array.from({ length: 100 }, async () => {
          const r = await login(s, "flooded@example.com");
          return {
            status: r.status,
            retryAfter: r.headers.get("retry-after"),
            code: r.status === 200 ? null : (await r.json()).error.code,
          };
        }),
      );
      const shed = answers.filter((a) => a.status !== 200);
      expect(answers.filter((a) => a.status === 200).length).toBeGreaterThan(0);
      expect(shed.length).toBeGreaterThan(50);
      for (const a of shed) {
        expect(a).toMatchObject({ status: 503, code: "BUSY" });
        expect(Number(a.retryAfter)).toBeGreaterThanOrEqual(1);
      }
    });
  });
});

describe("rehash on login", () => {
  test("a hash made with other argon2 settings (or bcrypt) is replaced by one with the current settings", async () => {
    await withServer({}, async (s) => {
      // The test config hashes with m=4096, t=1.
      const old = {
        "old-argon@example.com": await Bun.password.hash(PASSWORD, {
          algorithm: "argon2id",
          memoryCost: 8192,
          timeCost: 2,
        }),
        "old-bcrypt@example.com": await Bun.password.hash(PASSWORD, { algorithm: "bcrypt", cost: 4 }),
        "current@example.com": await Bun.password.hash(PASSWORD, {
          algorithm: "argon2id",
          memoryCost: 4096,
          timeCost: 1,
        }),
      };
      for (const [email, hash] of Object.entries(old))
        await db.sql`insert into users (email, name, password_hash) values (${email}, 'Old', ${hash})`;

      expect((await login(s, "old-argon@example.com", "a wrong password")).status).toBe(401);
      // only the right password rehashes
      expect(await storedHash("old-argon@example.com")).toBe(old["old-argon@example.com"]);

      for (const email of Object.keys(old)) {
        expect((await login(s, email)).status).toBe(200);
        const now = await storedHash(email);
        expect(now).toStartWith("$argon2id$v=19$m=4096,t=1,");
        if (email === "current@example.com")
          expect(now).toBe(old[email]); // already current: left alone
        else expect(now).not.toBe(old[email as keyof typeof old]);
        expect((await login(s, email)).status).toBe(200);
      }
    });
  });
});
