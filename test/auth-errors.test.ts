import { afterAll, beforeAll, expect, test } from "bun:test";
import { urlFor } from "./support/db.ts";
import { testApp } from "./support/server.ts";
import { freePort } from "./support/ops.ts";
import { connect, describeTarget, type Sql } from "../src/pg/db.ts";

// Two ways a database is out of reach: nothing listens, and the database does not exist.
const cases: { name: string; url: string; driverText: string }[] = [
  {
    name: "closed port",
    url: `postgres://leaky_user:hunter2@127.0.0.1:${freePort()}/leaky_db`,
    driverText: "ECONNREFUSED",
  },
  {
    name: "missing database",
    url: urlFor(`shinkei_missing_${crypto.randomUUID().slice(0, 8)}`),
    driverText: "does not exist",
  },
];
const pools: Sql[] = [];
beforeAll(() => {
  for (const c of cases) pools.push(connect(c.url, { max: 1 }));
});
afterAll(() => Promise.all(pools.map((p) => p.end({ timeout: 1 }))));

test.each(cases.map((c, i) => [c.name, i] as const))(
  "%s: /ready and login name no host, port, user or driver text, but carry a request id that the log explains",
  async (_name, i) => {
    const { url, driverText } = cases[i]!;
    const t = describeTarget(url);
    const logs: Record<string, unknown>[] = [];
    const app = testApp({ url, sql: pools[i]! }, {}, (e) => logs.push(e));
    const responses = [
      await app.request("/ready"),
      await app.request("/api/v1/auth/login", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: "a@example.com", password: "whatever1" }),
      }),
      await app.request("/api/v1/auth/register", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: "a@example.com", password: "whatever1", name: "A" }),
      }),
    ];
    for (const r of responses) {
      expect(r.status).toBe(503);
      const text = await r.text();
      for (const secret of [t.host, String(t.port), t.user, t.database, "hunter2", driverText, "PostgreSQL"])
        expect(text).not.toContain(secret);
      const id = r.headers.get("x-request-id")!;
      expect(JSON.parse(text).error).toMatchObject({ code: "DB_UNREACHABLE", requestId: id });
      // The operator's side of it: one error line with the same request id and the detail.
      const line = JSON.stringify(logs.find((l) => l.requestId === id && l.level === "error"));
      expect(line).toContain(`${t.host}:${t.port}`);
      expect(line).not.toContain("hunter2");
    }
  },
);
