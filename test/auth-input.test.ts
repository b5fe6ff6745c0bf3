import { afterAll, beforeAll, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { testApp } from "./support/server.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { PasswordHasher } from "../src/auth/passwords.ts";
import { shinkei } from "./support/cli.ts";
import { Service } from "./support/process.ts";

let db: TestDatabase;
let app: ReturnType<typeof testApp>;

beforeAll(async () => {
  db = await freshDatabase("input");
  await migrate(db.sql);
  app = testApp(db);
});
afterAll(() => db.drop());

/** A small deterministic generator, so a failure names a case that can be replayed. */
function* malformed(count: number): Generator<{ path: string; init: RequestInit }> {
  let seed = 42;
  const rand = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
  const paths = ["/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/password"];
  const types = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
    "application/jsonx",
    "APPLICATION/JSON; charset=utf-8",
  ];
  const values = [
    null,
    true,
    0,
    -1,
    1e308,
    "",
    " ",
    "x".repeat(300),
    "a@b",
    "' OR 1=1 --",
    "'; DROP TABLE users; --",
    "\u0000",
    "😀".repeat(100),
    [],
    {},
    ["a"],
    { $gt: "" },
  ];
  const bodies = [
    "{",
    "}",
    "[]",
    "null",
    '"str"',
    '{"email":',
    "{'single':1}",
    "\u0000\u0001",
    "x".repeat(20_000),
    "{}",
  ];
  for (let i = 0; i < count; i++) {
    const path = paths[rand(paths.length)]!;
    const kind = rand(4);
    let body: string | Uint8Array;
    if (kind === 0) body = bodies[rand(bodies.length)]!;
    else if (kind === 1) body = new Uint8Array(Array.from({ length: rand(64) }, () => rand(256)));
    else {
      const obj: Record<string, unknown> = {};
      for (const key of ["email", "password", "name", "currentPassword", "newPassword", "extra"]) {
        if (rand(3)) obj[key] = values[rand(values.length)];
      }
      body = JSON.stringify(kind === 2 ? obj : [obj]);
    }
    const headers: Record<string, string> = {};
    const type = types[rand(types.length)]!;
    if (type) headers["content-type"] = type;
    yield { path, init: { method: "POST", headers, body } };
  }
}

test("1,000 malformed requests: every answer is 4xx in the error shape, none 5xx, nothing stored", async () => {
  const seen = new Set<number>();
  for (const { path, init } of malformed(1000)) {
    const r = await app.request(path, init);
    seen.add(r.status);
    if (r.status < 400 || r.status >= 500) throw new Error(`${path} ${JSON.stringify(init)} gave ${r.status}`);
    const body = await r.json();
    expect(body.error.code).toBeString();
    expect(body.error.message).toBeString();
  }
  expect([...seen].sort()).toEqual([400, 401, 413, 415]);
  const [n] = await db.sql`select (select count(*) from users) + (select count(*) from sessions) as n`;
  expect(n!.n).toBe(0);
});

test("specific answers: bad JSON 400, schema 400 with fields, 16 KiB+ 413, wrong type 415, no route 404", async () => {
  const post = (body: string, type = "application/json") =>
    app.request("/api/v1/auth/login", { method: "POST", headers: { "content-type": type }, body });
  expect((await (await post("{nope")).json()).error.code).toBe("BAD_JSON");
  const schema = await (await post(JSON.stringify({ email: "x", password: 5, admin: true }))).json();
  expect(schema.error.code).toBe("INVALID_INPUT");
  expect(schema.error.fields).toEqual({
    email: "must be a valid email address",
    password: "must be a string",
    admin: "is not an accepted field",
  });
  expect((await post(JSON.stringify({ email: "a@b.io", password: "x".repeat(17_000) }))).status).toBe(413);
  expect((await post("{}", "text/plain")).status).toBe(415);
  const missing = await app.request("/api/v1/nothing");
  expect(missing.status).toBe(404);
  expect((await missing.json()).error.code).toBe("NOT_FOUND");
  const chunked = new ReadableStream({
    start(c) {
      for (let i = 0; i < 20; i++) c.enqueue(new TextEncoder().encode("x".repeat(1024)));
      c.close();
    },
  });
  expect(
    (
      await app.request("/api/v1/auth/login", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: chunked,
      })
    ).status,
  ).toBe(413);
});

test("text PostgreSQL refuses (NUL, lone surrogate) in name, email, password: 400 naming it, none stored", async () => {
  const post = (path: string, body: Record<string, string>) =>
    app.request(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const ok = {
    email: `nul-${crypto.randomUUID().slice(0, 8)}@example.com`,
    password: "correct horse battery",
    name: "Nul Tester",
  };
  const cases: [string, Record<string, string>, string][] = [
    ["/api/v1/auth/register", { ...ok, name: "Ann\u0000ie" }, "name"],
    ["/api/v1/auth/register", { ...ok, email: `a\u0000${ok.email}` }, "email"],
    ["/api/v1/auth/register", { ...ok, password: "correct horse\u0000battery" }, "password"],
    ["/api/v1/auth/register", { ...ok, name: "half \ud83d of a pair" }, "name"],
    [
      "/api/v1/auth/login",
      { email: ok.email, password: "\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0000" },
      "password",
    ],
  ];
  for (const [path, body, field] of cases) {
    const r = await post(path, body);
    expect(r.status, `${path} ${field}`).toBe(400);
    const e = (await r.json()).error;
    expect(e.code).toBe("INVALID_INPUT");
    expect(e.fields).toEqual({ [field]: "must not contain NUL characters or unpaired surrogates" });
  }
  expect((await db.sql`select 1 from users where email like ${"%" + ok.email}`).length).toBe(0);
  // The same body without the bad character is accepted: it was the character, not the rest.
  expect((await post("/api/v1/auth/register", ok)).status).toBe(201);
});

test("a name is one line: line breaks, other control characters and bidi overrides are a 400 naming it", async () => {
  // Mails greet the person by this name, and a registration may name any address: a name that
  // held line breaks would write whole paragraphs of someone else's text into a mail from us.
  const post = (body: Record<string, string>) =>
    app.request("/api/v1/auth/register", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const email = `lines-${crypto.randomUUID().slice(0, 8)}@example.com`;
  const ok = { email, password: "correct horse battery", name: "Ann Lee" };
  for (const name of [
    "Ann,\n\nYour account will be deleted unless you confirm at https://evil.example",
    "Ann\r\nLee",
    "Ann\tLee",
    "Ann\u0007Lee",
    "Ann\u0085Lee",
    "Ann\u2028Lee",
    "\u202eeeL nnA",
    "Ann\u200eLee",
    "Ann\u200fLee",
    "Ann\u061cLee",
  ]) {
    const r = await post({ ...ok, name });
    expect(r.status, JSON.stringify(name)).toBe(400);
    const e = (await r.json()).error;
    expect(e.code).toBe("INVALID_INPUT");
    expect(e.fields).toEqual({ name: "must be one line of text, without control characters" });
  }
  expect((await db.sql`select 1 from users where email = ${email}`).length).toBe(0);
  // Letters of any script, joiners and surrounding blanks are fine.
  const r = await post({ ...ok, name: "  Zoë 李 \u200d Łukasz\n" });
  expect(r.status).toBe(201);
  expect((await r.json()).user.name).toBe("Zoë 李 \u200d Łukasz");
});

test("the hash queue is bounded: past the limit the answer is 503 with Retry-After, not more memory", async () => {
  const hasher = new PasswordHasher({ concurrency: 1, queueLimit: 2, memoryCost: 8192, timeCost: 2 });
  const results = await Promise.allSettled(Array.from({ length: 6 }, () => hasher.hash("some password")));
  const busy = results.filter((r) => r.status === "rejected");
  expect(results.filter((r) => r.status === "fulfilled").length).toBe(3);
  expect(busy.length).toBe(3);
  expect((busy[0] as PromiseRejectedResult).reason.code).toBe("BUSY");
  expect(hasher.load).toEqual({ running: 0, waiting: 0 });
});

test("the hash queue follows the measured rate: it admits what clears in the wait budget, else says when", async () => {
  const hasher = new PasswordHasher({
    concurrency: 1,
    queueLimit: 100,
    memoryCost: 8192,
    timeCost: 2,
    waitBudgetMs: 100,
  });
  expect(hasher.rate).toEqual({ msPerHash: undefined, queueLimit: 100 });
  await hasher.hash("timing one");
  const { msPerHash, queueLimit } = hasher.rate;
  expect(msPerHash).toBeGreaterThan(0);
  expect(queueLimit).toBe(Math.max(0, Math.min(100, Math.floor(100 / msPerHash!) - 1)));
  const results = await Promise.allSettled(Array.from({ length: 60 }, () => hasher.hash("some password")));
  const busy = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
  // One runs at once, at most queueLimit wait: the rest are told at once.
  expect(busy.length).toBeGreaterThanOrEqual(60 - 1 - queueLimit);
  expect(busy.every((r) => r.reason.code === "BUSY" && r.reason.details.retryAfter >= 1)).toBe(true);
});

// argon2's cost is set by its parameters, so equal parameters mean equal work; the time itself is
// measured in the benchmark (bun run bench), not here.
test("an unknown email is verified against a hash made with exactly a real hash's parameters", async () => {
  const hasher = new PasswordHasher({ concurrency: 2, queueLimit: 10, memoryCost: 19456, timeCost: 2 });
  const real = await hasher.hash("the real password");
  const nobody = await hasher.nobodyHash();
  expect(nobody).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
  const parameters = (hash: string) => hash.split("$").slice(1, 4); // algorithm, version, m/t/p
  expect(parameters(nobody)).toEqual(parameters(real));
  expect(hasher.needsRehash(nobody)).toBe(false);
  expect(await hasher.verifyNobody("the real password")).toBe(false);
  expect(await hasher.verify("the real password", real)).toBe(true);
});

test("SIGTERM lets an in-flight request finish, then the server exits 0", async () => {
  const serve = await Service.start(["serve"], {
    DATABASE_URL: db.url,
    PORT: "0",
    HOST: "127.0.0.1",
    ARGON2_MEMORY_KIB: "65536",
    ARGON2_TIME_COST: "3",
  });
  const url = await serve.listening();
  const pending = fetch(`${url}/api/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: "x@y.io", password: "whatever!" }),
  });
  await Bun.sleep(30);
  const exited = serve.stop();
  const r = await pending;
  expect(r.status).toBe(401);
  expect(await exited).toBe(0);
  await expect(fetch(`${url}/health`)).rejects.toThrow();
});

test("shinkei serve reports an unreachable database in one line", async () => {
  const r = await shinkei(["serve"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/x", PORT: "0" });
  expect(r.code).toBe(2);
  expect(r.stderr.trim().split("\n")[0]).toBe("✖ cannot reach PostgreSQL at 127.0.0.1:1 (ECONNREFUSED)");
});
