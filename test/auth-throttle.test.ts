import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { type TestServer, withServer as withServerOn } from "./support/server.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { clientAddress, parseProxyList } from "../src/config/net.ts";
import { loadConfig } from "../src/config/index.ts";
import { Throttle } from "../src/auth/throttle.ts";

const PASSWORD = "correct horse battery";
let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase("throttle");
  await migrate(db.sql);
});
afterAll(() => db.drop());
// Every test starts from empty counters: they live in PostgreSQL and would leak from one test to the next.
beforeEach(async () => {
  await db.sql`delete from login_throttle`;
});

const withServer = (env: Record<string, string>, fn: (s: TestServer) => Promise<void>) => withServerOn(db, env, fn);
const login = (s: TestServer, email: string, password: string, from?: string) =>
  s.api("/api/v1/auth/login", {
    method: "POST",
    json: { email, password },
    headers: from ? { "x-forwarded-for": from } : {},
  });
const register = async (s: TestServer, email: string) =>
  expect(
    (await s.api("/api/v1/auth/register", { method: "POST", json: { email, password: PASSWORD, name: "T" } })).status,
  ).toBe(201);
const tally = (statuses: number[]) =>
  statuses.reduce<Record<number, number>>((t, s) => ({ ...t, [s]: (t[s] ?? 0) + 1 }), {});

describe("attempts are reserved before hashing", () => {
  test("20 parallel wrong passwords against a limit of 5: exactly 5 are tried (401), 15 refused (429)", async () => {
    await withServer({ LOGIN_MAX_FAILURES: "5", LOGIN_MAX_FAILURES_PER_IP: "100000" }, async (s) => {
      await register(s, "race@example.com");
      const statuses = await Promise.all(
        Array.from({ length: 20 }, () => login(s, "race@example.com", "wrong password").then((r) => r.status)),
      );
      expect(tally(statuses)).toEqual({ 401: 5, 429: 15 });
      // The reservations were the failures: the right password is refused too until the window ends.
      expect((await login(s, "race@example.com", PASSWORD)).status).toBe(429);
    });
  });

  test("a correct password counts as no failure and clears the account's failures from that address", async () => {
    await withServer({ LOGIN_MAX_FAILURES: "5", LOGIN_MAX_FAILURES_PER_IP: "8" }, async (s) => {
      await register(s, "steady@example.com");
      for (let i = 0; i < 4; i++) expect((await login(s, "steady@example.com", "typo typo")).status).toBe(401);
      for (let i = 0; i < 3; i++) expect((await login(s, "steady@example.com", PASSWORD)).status).toBe(200);
      // The pair count starts again at 0, so no pair limit below; the address limit (8) holds the 4 typos
      // but not the 3 successes, so it is the 9th typo that is refused.
      for (let i = 0; i < 4; i++) expect((await login(s, "steady@example.com", "typo typo")).status).toBe(401);
      expect((await login(s, "steady@example.com", "typo typo")).status).toBe(429);
    });
  });
});

describe("client address behind a proxy", () => {
  test("rotating the leftmost X-Forwarded-For value does not reset the per-address limit", async () => {
    await withServer({ TRUST_PROXY: "true", LOGIN_MAX_FAILURES_PER_IP: "3" }, async (s) => {
      // The client writes the first value; our proxy (on loopback, trusted by default) appends what it saw.
      const from = (i: number) => `198.51.100.${i}, 203.0.113.50`;
      for (let i = 0; i < 3; i++)
        expect((await login(s, `spray${i}@example.com`, "whatever1", from(i))).status).toBe(401);
      const blocked = await login(s, "spray9@example.com", "whatever1", from(9));
      expect(blocked.status).toBe(429);
      // Another real client behind the same proxy is not affected.
      expect((await login(s, "spray9@example.com", "whatever1", "198.51.100.1, 203.0.113.51")).status).toBe(401);
    });
  });

  test("a peer that is not a trusted proxy is the client, whatever X-Forwarded-For says", async () => {
    await withServer(
      { TRUST_PROXY: "true", TRUSTED_PROXIES: "192.0.2.0/24", LOGIN_MAX_FAILURES_PER_IP: "2" },
      async (s) => {
        for (let i = 0; i < 2; i++)
          expect((await login(s, `direct${i}@example.com`, "whatever1", `203.0.113.${i}`)).status).toBe(401);
        expect((await login(s, "direct5@example.com", "whatever1", "203.0.113.5")).status).toBe(429);
      },
    );
  });

  test("without TRUST_PROXY the header is not read at all", async () => {
    await withServer({ LOGIN_MAX_FAILURES_PER_IP: "2" }, async (s) => {
      for (let i = 0; i < 2; i++)
        expect((await login(s, `plain${i}@example.com`, "whatever1", `203.0.113.${i}`)).status).toBe(401);
      expect((await login(s, "plain5@example.com", "whatever1", "203.0.113.5")).status).toBe(429);
    });
  });

  test("an IPv6 client counts as its /64: other addresses in it, or other spellings, get no fresh tries", async () => {
    // Every IPv6 host holds a whole /64 and may send from any address in it: counted per address,
    // one machine had 2^64 budgets, for the pair as for the address.
    await withServer({ TRUST_PROXY: "true", LOGIN_MAX_FAILURES: "3", LOGIN_MAX_FAILURES_PER_IP: "5" }, async (s) => {
      await register(s, "sixty-four@example.com");
      const tries = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9", "2001:DB8:1:2::1"];
      const statuses = [];
      for (const from of tries) statuses.push((await login(s, "sixty-four@example.com", "a guess!", from)).status);
      expect(statuses).toEqual([401, 401, 401, 429]);
      for (const n of [7, 8])
        expect((await login(s, `other-${n}@example.com`, "a guess!", `2001:db8:1:2::${n}`)).status).toBe(401);
      // The address limit (5) is the /64's too; the next /64 is someone else.
      expect(
        (await login(s, "another@example.com", "a guess!", "2001:0db8:0001:0002:0000:0000:0000:0003")).status,
      ).toBe(429);
      expect((await login(s, "sixty-four@example.com", "a guess!", "2001:db8:1:3::1")).status).toBe(401);
      // An IPv4 address in IPv6 form is that IPv4 address, however it is written.
      for (let i = 0; i < 3; i++)
        expect((await login(s, "sixty-four@example.com", "a guess!", "192.0.2.1")).status).toBe(401);
      expect((await login(s, "sixty-four@example.com", "a guess!", "::ffff:c000:201")).status).toBe(429);
    });
  });

  test("clientAddress walks from the right past trusted hops only", () => {
    const trusted = parseProxyList("127.0.0.0/8, ::1, 10.0.0.0/8");
    expect(clientAddress("127.0.0.1", "1.1.1.1, 203.0.113.7", trusted)).toBe("203.0.113.7");
    expect(clientAddress("127.0.0.1", "1.1.1.1, 203.0.113.7, 10.1.2.3", trusted)).toBe("203.0.113.7");
    expect(clientAddress("::ffff:127.0.0.1", "203.0.113.7", trusted)).toBe("203.0.113.7");
    expect(clientAddress("198.51.100.4", "203.0.113.7", trusted)).toBe("198.51.100.4");
    expect(clientAddress("127.0.0.1", undefined, trusted)).toBe("127.0.0.1");
    // Every hop ours: the request came from inside, from the leftmost.
    expect(clientAddress("127.0.0.1", "10.0.0.9, 10.0.0.1", trusted)).toBe("10.0.0.9");
    // Garbage where an address should be was written by the client: the hop that passed it on answers for it.
    expect(clientAddress("127.0.0.1", "1.1.1.1, not-an-ip", trusted)).toBe("127.0.0.1");
    expect(clientAddress("127.0.0.1", "203.0.113.7, 10.0.0.2, x", trusted)).toBe("127.0.0.1");
    expect(clientAddress("127.0.0.1", "2001:db8::1", trusted)).toBe("2001:db8::1");
    expect(clientAddress(undefined, "203.0.113.7", trusted)).toBeUndefined();
  });

  test("TRUSTED_PROXIES accepts addresses and CIDR ranges and rejects anything else", () => {
    expect(() => parseProxyList("10.0.0.0/8, 2001:db8::/32 192.0.2.1")).not.toThrow();
    expect(parseProxyList("")).toBeDefined();
    for (const bad of ["10.0.0.0/33", "example.com", "10.0.0.0/x", "::1/129", "1.2.3"])
      expect(() => parseProxyList(bad)).toThrow(bad);
    expect(() => loadConfig({ TRUSTED_PROXIES: "10.0.0.0/8, 10.0.0.0/33" })).toThrow(
      'TRUSTED_PROXIES must be IP addresses or CIDR ranges such as 10.0.0.0/8, separated by commas: "10.0.0.0/33"',
    );
  });
});

describe("nobody can lock out someone else", () => {
  test("an attacker who exhausts the limit on alice from one address does not stop alice from another", async () => {
    await withServer(
      { TRUST_PROXY: "true", LOGIN_MAX_FAILURES: "5", LOGIN_MAX_FAILURES_PER_IP: "100000" },
      async (s) => {
        await register(s, "alice@example.com");
        const attacker = "203.0.113.66";
        for (let i = 0; i < 5; i++)
          expect((await login(s, "alice@example.com", "guess guess", attacker)).status).toBe(401);
        expect((await login(s, "alice@example.com", "guess guess", attacker)).status).toBe(429);
        expect((await login(s, "alice@example.com", PASSWORD, attacker)).status).toBe(429);
        expect((await login(s, "alice@example.com", PASSWORD, "198.51.100.7")).status).toBe(200);
      },
    );
  });

  test("past the per-account ceiling every attempt on the account waits, and none is refused", async () => {
    // Half a second: far above an undelayed login here (tens of ms), and paid twice below.
    const env = { TRUST_PROXY: "true", LOGIN_MAX_FAILURES_PER_ACCOUNT: "4", LOGIN_ACCOUNT_DELAY: "500ms" };
    await withServer(env, async (s) => {
      await register(s, "bob@example.com");
      for (let i = 0; i < 4; i++)
        expect((await login(s, "bob@example.com", "guess guess", `203.0.113.${10 + i}`)).status).toBe(401);
      // A lower bound on a deliberate wait, not a speed measurement.
      const t = performance.now();
      expect((await login(s, "bob@example.com", PASSWORD, "198.51.100.8")).status).toBe(200);
      expect(performance.now() - t).toBeGreaterThanOrEqual(450);
      expect((await login(s, "bob@example.com", "guess guess", "203.0.113.20")).status).toBe(401);
    });
  });
});

describe("Throttle, against the database directly", () => {
  const count = async () => (await db.sql`select count(*) as n from login_throttle`)[0]!.n;

  test("a refused attempt counts nowhere; release gives an attempt back on every key", async () => {
    const t = new Throttle(db.sql, 60_000);
    const both = [
      { key: "unit:a", limit: 1 },
      { key: "unit:b", limit: 2 },
    ];
    const first = await t.reserve(both);
    await expect(t.reserve(both)).rejects.toMatchObject({ code: "TOO_MANY_REQUESTS" }); // a is full; b stays at 1
    await first.release();
    await t.reserve(both); // a back to 1, b to 1: had the refusal counted, b would be at 2 now
    await expect(t.reserve([{ key: "unit:b", limit: 1 }])).rejects.toMatchObject({ code: "TOO_MANY_REQUESTS" });
  });

  test("success clears, releases or keeps, as each rule says", async () => {
    const t = new Throttle(db.sql, 60_000);
    const r = await t.reserve([
      { key: "unit:clear", limit: 1, onSuccess: "clear" },
      { key: "unit:release", limit: 1, onSuccess: "release" },
      { key: "unit:keep", limit: 1 },
    ]);
    await r.succeeded();
    await t.reserve([{ key: "unit:clear", limit: 1 }]);
    await t.reserve([{ key: "unit:release", limit: 1 }]);
    await expect(t.reserve([{ key: "unit:keep", limit: 1 }])).rejects.toMatchObject({ code: "TOO_MANY_REQUESTS" });
    expect(await count()).toBe(3); // clear deleted its row; the reserve above made it anew
  });

  test("a slowing rule past its limit asks for its delay instead of refusing", async () => {
    const t = new Throttle(db.sql, 60_000);
    const rule = { key: "unit:slow", limit: 1, delayMs: 1234 };
    expect((await t.reserve([rule])).delayMs).toBe(0);
    expect((await t.reserve([rule])).delayMs).toBe(1234);
  });

  test("prune drops ended windows only", async () => {
    const t = new Throttle(db.sql, 60_000);
    await t.reserve([
      { key: "unit:old", limit: 5 },
      { key: "unit:new", limit: 5 },
    ]);
    await db.sql`update login_throttle set window_start = now() - interval '2 minutes' where failures = 1
      and key = (select min(key) from login_throttle)`;
    expect(await t.prune()).toBe(1);
    expect(await count()).toBe(1);
  });
});
