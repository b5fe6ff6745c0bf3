import { afterAll, beforeAll, expect, test, setDefaultTimeout } from "bun:test";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { startTestServer, type TestServer } from "./support/server.ts";
import { connect, ensureDatabase, type Sql } from "../src/pg/db.ts";

// A PostgreSQL of the test's own, stopped under load: the machine's shared server is never stopped.
setDefaultTimeout(120_000);

let cluster: TestCluster;
let sql: Sql;
let server: TestServer;

beforeAll(async () => {
  cluster = await startCluster();
  const url = cluster.url("shinkei");
  await ensureDatabase(url);
  sql = connect(url, { max: 1 });
  // Logins that met the outage count as failures of the pair: not what this test is about.
  server = await startTestServer(
    { name: "shinkei", url, sql, drop: async () => {} },
    { LOGIN_MAX_FAILURES: "1000", LOGIN_MAX_FAILURES_PER_IP: "100000" },
  );
});
afterAll(async () => {
  await server?.stop();
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
});

type Answer = { status: number; retryAfter: string | null; code: string | null; what: string };

test("PostgreSQL shutting down under load: every answer is 2xx or 503 DB_UNREACHABLE with Retry-After", async () => {
  const password = "correct horse battery";
  const email = `load-${crypto.randomUUID().slice(0, 8)}@example.com`;
  const reg = await server.api("/api/v1/auth/register", { method: "POST", json: { email, password, name: "Load" } });
  expect(reg.status).toBe(201);
  const token = (
    (await (await server.api("/api/v1/auth/login", { method: "POST", json: { email, password } })).json()) as {
      token: string;
    }
  ).token;

  const answers: Answer[] = [];
  // Counted from when pg_ctl says the server is down: how many answers the load got before that
  // depends on how busy the machine is, and is not what this test is about.
  let stopped = false;
  let afterStop = 0;
  const requests: (() => [string, Promise<Response>])[] = [
    () => ["ready", server.api("/ready")],
    () => ["worlds", server.api("/api/v1/worlds", { token })],
    () => ["me", server.api("/api/v1/auth/me", { token })],
    () => ["login", server.api("/api/v1/auth/login", { method: "POST", json: { email, password } })],
  ];
  // Eight clients, each one request after another, until well after the server is down.
  const client = async (i: number) => {
    for (let n = i; afterStop < 120; n++) {
      const [what, p] = requests[n % requests.length]!();
      const r = await p;
      const body = (await r.json().catch(() => null)) as { error?: { code?: string } } | null;
      answers.push({
        status: r.status,
        retryAfter: r.headers.get("retry-after"),
        code: body?.error?.code ?? null,
        what,
      });
      if (stopped) afterStop++;
    }
  };
  const clients = Array.from({ length: 8 }, (_, i) => client(i));
  while (answers.length < 150) await Bun.sleep(10);
  const stop = await cluster.run("pg_ctl", ["-D", cluster.dataDir, "stop", "-m", "fast", "-w"]);
  expect(stop.code).toBe(0);
  stopped = true;
  await Promise.all(clients);

  const ok = answers.filter((a) => a.status >= 200 && a.status < 300);
  const failed = answers.filter((a) => a.status >= 300);
  expect(ok.length).toBeGreaterThan(100);
  expect(failed.length).toBeGreaterThan(100);
  const wrong = failed.filter(
    (a) => a.status !== 503 || a.retryAfter === null || (a.what !== "ready" && a.code !== "DB_UNREACHABLE"),
  );
  expect(wrong).toEqual([]);
  // The shutdown's own errors went the same way (reported by the log as unavailable, not unhandled).
  expect(server.logs.filter((l) => l.msg === "unhandled error")).toEqual([]);
});
