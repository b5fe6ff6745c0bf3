import { afterAll, beforeAll, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { testApp } from "./support/server.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { loadConfig } from "../src/config/index.ts";
import { ShinkeiError } from "../src/errors.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await freshDatabase("accesslog");
  await migrate(db.sql);
});
afterAll(() => db.drop());

/** The access lines one round of requests leaves: two passing probes, a 200, a 401 and a 404. */
async function linesWith(env: Record<string, string>): Promise<string[]> {
  const logs: Record<string, unknown>[] = [];
  const app = testApp(db, env, (l) => void logs.push(l));
  const email = `log-${crypto.randomUUID().slice(0, 8)}@example.com`;
  expect((await app.request("/health")).status).toBe(200);
  expect((await app.request("/ready")).status).toBe(200);
  const reg = await app.request("/api/v1/auth/register", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password: "correct horse battery", name: "L" }),
  });
  expect(reg.status).toBe(201);
  expect((await app.request("/api/v1/auth/me")).status).toBe(401);
  expect((await app.request("/api/v1/nothing")).status).toBe(404);
  return logs.filter((l) => l.msg === "request").map((l) => `${l.path} ${l.status}`);
}

test("ACCESS_LOG: all (default) but passing probes; errors 4xx/5xx; off; ACCESS_LOG_PROBES adds probes", async () => {
  expect(await linesWith({})).toEqual(["/api/v1/auth/register 201", "/api/v1/auth/me 401", "/api/v1/nothing 404"]);
  expect(await linesWith({ ACCESS_LOG: "errors" })).toEqual(["/api/v1/auth/me 401", "/api/v1/nothing 404"]);
  expect(await linesWith({ ACCESS_LOG: "off" })).toEqual([]);
  expect(await linesWith({ ACCESS_LOG: "all", ACCESS_LOG_PROBES: "true" })).toEqual([
    "/health 200",
    "/ready 200",
    "/api/v1/auth/register 201",
    "/api/v1/auth/me 401",
    "/api/v1/nothing 404",
  ]);
});

test("a failing probe is logged even when passing ones are not", async () => {
  const logs: Record<string, unknown>[] = [];
  // A pool whose database does not exist: /ready answers 503.
  const { connect } = await import("../src/pg/db.ts");
  const url = db.url.replace(/\/[^/]+$/, `/missing_${crypto.randomUUID().slice(0, 8)}`);
  const sql = connect(url, { max: 1 });
  try {
    const app = testApp({ url, sql }, {}, (l) => void logs.push(l));
    expect((await app.request("/ready")).status).toBe(503);
    expect(logs.filter((l) => l.msg === "request").map((l) => `${l.path} ${l.status}`)).toEqual(["/ready 503"]);
  } finally {
    await sql.end({ timeout: 1 });
  }
});

test("a bad ACCESS_LOG is refused by name", () => {
  expect(() => loadConfig({ ACCESS_LOG: "verbose" })).toThrow(ShinkeiError);
  try {
    loadConfig({ ACCESS_LOG: "verbose" });
  } catch (e) {
    expect((e as Error).message).toContain("ACCESS_LOG");
    expect((e as Error).message).toContain("must be all, errors or off");
  }
});
