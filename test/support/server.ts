import { loadConfig, type Config } from "../../src/config/index.ts";
import { startServer, type Running } from "../../server/serve.ts";
import { createApp } from "../../server/app.ts";
import { AuthService } from "../../src/auth/service.ts";
import { AccountRecovery, type Clock } from "../../src/auth/password-reset.ts";
import type { TestDatabase } from "./db.ts";
import type { Log } from "../../src/log.ts";

/** Cheap hashing keeps the suite quick; the parameters are config, and the bench runs the defaults. */
export function testConfig(db: Pick<TestDatabase, "url">, env: Record<string, string> = {}): Config {
  return loadConfig({
    DATABASE_URL: db.url,
    HOST: "127.0.0.1",
    PORT: "0",
    COOKIE_SECURE: "false",
    ARGON2_MEMORY_KIB: "4096",
    ARGON2_TIME_COST: "1",
    // Queues sized by HASH_QUEUE_LIMIT alone, as the tests that flood them expect; the wait budget has its own test.
    HASH_WAIT_BUDGET: "1m",
    ...env,
  });
}

export type TestServer = Running & {
  logs: Record<string, unknown>[];
  api(path: string, init?: RequestInit & { json?: unknown; token?: string }): Promise<Response>;
};

/** A real listener on a loopback port, its log lines captured for assertions. */
export async function startTestServer(
  db: TestDatabase,
  env: Record<string, string> = {},
  options: { clock?: Clock } = {},
): Promise<TestServer> {
  const logs: Record<string, unknown>[] = [];
  const running = await startServer(testConfig(db, env), { log: (e) => logs.push(e), clock: options.clock });
  const base = `http://127.0.0.1:${running.port}`;
  return {
    ...running,
    logs,
    api(path, init = {}) {
      const headers = new Headers(init.headers);
      if (init.json !== undefined) headers.set("content-type", "application/json");
      if (init.token) headers.set("authorization", `Bearer ${init.token}`);
      return fetch(base + path, {
        ...init,
        headers,
        body: init.json !== undefined ? JSON.stringify(init.json) : init.body,
      });
    },
  };
}

/** A server of its own for one test (`env` on top of the test defaults), stopped whatever happens. */
export async function withServer<T>(
  db: TestDatabase,
  env: Record<string, string>,
  fn: (s: TestServer) => Promise<T>,
): Promise<T> {
  const s = await startTestServer(db, env);
  try {
    return await fn(s);
  } finally {
    await s.stop();
  }
}

/** The app without a listener, for the many small request cases (`app.request`). */
export function testApp(db: Pick<TestDatabase, "url" | "sql">, env: Record<string, string> = {}, log: Log = () => {}) {
  const config = testConfig(db, env);
  const auth = new AuthService(db.sql, config);
  // No outbox: these cases never reach the mail.
  const recovery = new AccountRecovery({
    sql: db.sql,
    config,
    throttle: auth.throttle,
    hasher: auth.hasher,
    sessions: auth.sessions,
    mail: undefined,
    log,
  });
  return createApp({ sql: db.sql, config, auth, recovery, log });
}

/**
 * A new account of the calling test's own, registered through `server`: no test leans on an
 * account another test made (or changed). Waits until its mail, if any, is handed over.
 */
export async function newAccount(
  server: TestServer,
  label: string,
  password = "correct horse battery",
): Promise<string> {
  const email = `${label}-${crypto.randomUUID().slice(0, 8)}@example.com`;
  const r = await server.api("/api/v1/auth/register", { method: "POST", json: { email, password, name: "Test User" } });
  if (r.status !== 201) throw new Error(`registering ${email} answered ${r.status}: ${await r.text()}`);
  await server.recovery.idle();
  return email;
}
