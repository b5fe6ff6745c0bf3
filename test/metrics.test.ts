import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { shinkei } from "./support/cli.ts";
import { Service } from "./support/process.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";
import { startTestServer, type TestServer } from "./support/server.ts";
import { backupHistory, freePort, parseMetrics, sample, type Sample } from "./support/ops.ts";
import { migrate } from "../src/migrations/migrate.ts";

// Real databases, servers and processes: 5 s is too tight on a busy 2-core machine.
setDefaultTimeout(90_000);

const TOKEN = "metrics-token-0123456789abcdef";
let db: TestDatabase;
let s3: TestS3;
let dir: string;
let env: Record<string, string>;
let history: { passed: string; failed: string };

beforeAll(async () => {
  db = await freshDatabase("metrics");
  await migrate(db.sql);
  await seedSample(db.sql, "metrics");
  s3 = await TestS3.start();
  dir = await tempDir("metrics");
  env = { DATABASE_URL: db.url, BACKUP_DIR: dir };
  history = await backupHistory(env, s3.env());
});
afterAll(async () => {
  await s3.stop();
  await db.drop();
});

describe("the backup-service's ops listener", () => {
  let service: Service;
  let url: string;
  beforeAll(async () => {
    const port = freePort();
    service = await Service.start(["backup-service"], {
      ...env,
      ...s3.env(),
      METRICS_PORT: String(port),
      METRICS_TOKEN: TOKEN,
    });
    await service.waitFor((l) => l.msg === "ops listener");
    url = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    expect(await service.stop()).toBe(0);
  });

  const scrape = async (): Promise<Sample[]> => {
    const r = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toStartWith("text/plain; version=0.0.4");
    return parseMetrics(await r.text());
  };

  test("every backup figure matches `backup --list --json`", async () => {
    const list = await shinkei(["backup", "--list", "--json"], { ...env, ...s3.env() });
    expect(list).toSucceed();
    const rows = JSON.parse(list.stdout) as {
      name: string;
      takenAt: string;
      sizeBytes: number;
      check: string;
      location: string;
      drill: { passed: boolean; at: string; durationMs: number } | null;
    }[];
    const m = await scrape();
    const dump = { kind: "dump" };
    const good = rows.filter((r) => r.check === "ok");
    const newest = good[0]!;
    expect(newest.name).toBe(history.failed);
    expect(sample(m, "shinkei_backups", dump)).toBe(good.length);
    expect(sample(m, "shinkei_backup_newest_timestamp_seconds", dump)).toBe(Date.parse(newest.takenAt) / 1000);
    expect(sample(m, "shinkei_backup_newest_size_bytes", dump)).toBe(newest.sizeBytes);
    const age = sample(m, "shinkei_backup_newest_age_seconds", dump)!;
    expect(Math.abs(age - (Date.now() - Date.parse(newest.takenAt)) / 1000)).toBeLessThan(5);
    const manifest = JSON.parse(await readFile(join(dir, `${newest.name}.manifest.json`), "utf8"));
    expect(sample(m, "shinkei_backup_newest_duration_seconds", dump)).toBe(manifest.durationMs / 1000);
    expect(sample(m, "shinkei_backup_max_age_seconds", dump)).toBe(26 * 3600);

    // The last drill is the failed one; the last verified restore is the older backup's.
    const drills = rows.flatMap((r) => (r.drill ? [r.drill] : [])).sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
    expect(drills.map((d) => d.passed)).toEqual([false, true]);
    expect(sample(m, "shinkei_drill_last_passed", dump)).toBe(0);
    expect(sample(m, "shinkei_drill_last_timestamp_seconds", dump)).toBe(Date.parse(drills[0]!.at) / 1000);
    expect(sample(m, "shinkei_drill_last_duration_seconds", dump)).toBe(drills[0]!.durationMs / 1000);
    expect(
      Math.abs(sample(m, "shinkei_drill_last_age_seconds", dump)! - (Date.now() - Date.parse(drills[0]!.at)) / 1000),
    ).toBeLessThan(5);
    expect(
      Math.abs(
        sample(m, "shinkei_drill_last_success_age_seconds", dump)! - (Date.now() - Date.parse(drills[1]!.at)) / 1000,
      ),
    ).toBeLessThan(5);
    expect(sample(m, "shinkei_drill_max_age_seconds", dump)).toBe(8 * 86400);

    // Off-site: the list shows where each file is; the metric counts the ones not yet there.
    const pending = rows.filter((r) => r.location === "local").length;
    expect(pending).toBe(1);
    expect(sample(m, "shinkei_offsite_pending_backups", { store: "s3" })).toBe(pending);
    expect(sample(m, "shinkei_backup_source_up", { source: "dump" })).toBe(1);
  });

  test("the figures follow the folder: a new backup shows within the cache's two seconds", async () => {
    const before = sample(await scrape(), "shinkei_backups", { kind: "dump" })!;
    const r = await shinkei(["backup"], env);
    expect(r).toSucceed();
    let after = before;
    // A scrape every 250 ms for up to 4 s: the cache holds for 1.5 s, so faster polls only scrape it again.
    for (let i = 0; i < 16 && after === before; i++) {
      await Bun.sleep(250);
      after = sample(await scrape(), "shinkei_backups", { kind: "dump" })!;
    }
    expect(after).toBe(before + 1);
    expect(sample(await scrape(), "shinkei_offsite_pending_backups", { store: "s3" })).toBe(2);
  });

  test("METRICS_TOKEN is enforced: none, a wrong one and a wrong scheme get 401; Basic with it works", async () => {
    for (const authorization of [undefined, "Bearer wrong-token-0123456789", `Token ${TOKEN}`, `Bearer ${TOKEN}x`]) {
      const r = await fetch(`${url}/metrics`, { headers: authorization ? { authorization } : {} });
      expect(r.status).toBe(401);
      expect(r.headers.get("www-authenticate")).toContain("Basic");
      expect((await r.json()).error.code).toBe("UNAUTHORIZED");
    }
    const basic = await fetch(`${url}/metrics`, { headers: { authorization: `Basic ${btoa(`prometheus:${TOKEN}`)}` } });
    expect(basic.status).toBe(200);
  });
});

describe("serve: /metrics on the public port", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer(db, { BACKUP_DIR: dir, METRICS_TOKEN: TOKEN, LOGIN_MAX_FAILURES: "2" });
  });
  afterAll(() => server.stop());

  test("requests count by route pattern and status, logins by outcome; no email or address in any label", async () => {
    const email = `metrics-${crypto.randomUUID().slice(0, 6)}@example.com`;
    expect(
      (
        await server.api("/api/v1/auth/register", {
          method: "POST",
          json: { email, password: "correct horse battery", name: "M" },
        })
      ).status,
    ).toBe(201);
    expect(
      (await server.api("/api/v1/auth/login", { method: "POST", json: { email, password: "correct horse battery" } }))
        .status,
    ).toBe(200);
    for (let i = 0; i < 2; i++)
      expect(
        (await server.api("/api/v1/auth/login", { method: "POST", json: { email, password: "wrong password!!" } }))
          .status,
      ).toBe(401);
    expect(
      (await server.api("/api/v1/auth/login", { method: "POST", json: { email, password: "wrong password!!" } }))
        .status,
    ).toBe(429);
    expect((await server.api(`/api/v1/users/${email}`)).status).toBe(404);
    expect((await server.api("/health")).status).toBe(200);

    const r = await server.api("/metrics", { token: TOKEN });
    expect(r.status).toBe(200);
    const text = await r.text();
    const m = parseMetrics(text);
    expect(sample(m, "shinkei_login_attempts_total", { outcome: "success" })).toBe(1);
    expect(sample(m, "shinkei_login_attempts_total", { outcome: "invalid" })).toBe(2);
    expect(sample(m, "shinkei_login_attempts_total", { outcome: "throttled" })).toBe(1);
    const login = { method: "POST", route: "/api/v1/auth/login" };
    expect(sample(m, "shinkei_http_requests_total", { ...login, status: "401" })).toBe(2);
    expect(sample(m, "shinkei_http_requests_total", { ...login, status: "429" })).toBe(1);
    expect(sample(m, "shinkei_http_request_duration_seconds_count", { ...login, status: "200" })).toBe(1);
    expect(sample(m, "shinkei_http_request_duration_seconds_bucket", { ...login, status: "200", le: "+Inf" })).toBe(1);
    expect(sample(m, "shinkei_http_requests_total", { method: "GET", route: "/health", status: "200" })).toBe(1);
    // The raw path of an unknown route is never a label: it could be anything a client sends.
    expect(sample(m, "shinkei_http_requests_total", { method: "GET", route: "unmatched", status: "404" })).toBe(1);
    expect(sample(m, "shinkei_password_hash_queue_depth")).toBe(0);
    expect(sample(m, "shinkei_password_hash_running")).toBe(0);
    expect(sample(m, "shinkei_backups", { kind: "dump" })).toBeGreaterThanOrEqual(2);
    for (const s of m) for (const v of Object.values(s.labels)) expect(v).not.toMatch(/@|127\.0\.0\.1|::1/);
    expect(text).not.toContain(email);
  });

  test("the token is enforced, and the status page is not on the public port without OPS_TOKEN", async () => {
    expect((await server.api("/metrics")).status).toBe(401);
    expect((await server.api("/metrics", { token: "not-the-token-0123456789" })).status).toBe(401);
    expect((await server.api("/")).status).toBe(404);
  });

  test("without METRICS_TOKEN or METRICS_PORT there is no /metrics at all", async () => {
    const plain = await startTestServer(db, { BACKUP_DIR: dir });
    try {
      expect((await plain.api("/metrics")).status).toBe(404);
      expect((await plain.api("/metrics", { token: TOKEN })).status).toBe(404);
    } finally {
      await plain.stop();
    }
  });
});

test("an unreadable backup folder: the scrape answers source_up 0, no made-up figures; the page says so", async () => {
  const notADir = join(await tempDir("metrics-file"), "backups");
  await Bun.write(notADir, "a file where the folder should be");
  const server = await startTestServer(db, { BACKUP_DIR: notADir, METRICS_TOKEN: TOKEN, OPS_TOKEN: TOKEN });
  try {
    const r = await server.api("/metrics", { token: TOKEN });
    expect(r.status).toBe(200);
    const m = parseMetrics(await r.text());
    expect(sample(m, "shinkei_backup_source_up", { source: "dump" })).toBe(0);
    expect(m.filter((s) => s.name.startsWith("shinkei_backup_newest") || s.name.startsWith("shinkei_drill_"))).toEqual(
      [],
    );
    const page = await server.api("/", { token: TOKEN });
    expect(page.status).toBe(503);
    const html = await page.text();
    expect(html).toContain("The backup folder cannot be read");
    expect(html).toContain(`cannot read ${notADir}`);
  } finally {
    await server.stop();
  }
});

test("serve with METRICS_PORT opens the ops listener, warning when open to other hosts without tokens", async () => {
  const port = freePort();
  const server = await startTestServer(db, { BACKUP_DIR: dir, METRICS_PORT: String(port), METRICS_HOST: "0.0.0.0" });
  try {
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(r.status).toBe(200);
    expect(sample(parseMetrics(await r.text()), "shinkei_backups", { kind: "dump" })).toBeGreaterThan(0);
    expect(
      server.logs.find(
        (l) => l.level === "warn" && String(l.msg).startsWith("the ops listener is reachable from other machines"),
      ),
    ).toBeDefined();
    // The public port has neither route: no token was set for it.
    expect((await server.api("/metrics")).status).toBe(404);
  } finally {
    await server.stop();
  }
  const quiet = await startTestServer(db, { BACKUP_DIR: dir, METRICS_PORT: String(freePort()) });
  await quiet.stop();
  expect(quiet.logs.some((l) => String(l.msg).startsWith("the ops listener is reachable"))).toBe(false);
});

test("bad METRICS_* values are refused by name before anything starts", async () => {
  for (const [name, value, message] of [
    ["METRICS_PORT", "0", "must be at least 1"],
    ["METRICS_PORT", "http", "must be a whole number"],
    ["METRICS_TOKEN", "short", "must be at least 16 printable characters"],
    ["OPS_TOKEN", "has spaces in it, quite long", "must be at least 16 printable characters"],
  ] as const) {
    const r = await shinkei(["backup-service"], { ...env, [name]: value });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${name} ${message}`);
  }
});

test("a METRICS_PORT in use stops backup-service and serve with LISTEN_FAILED, not a stack trace", async () => {
  const busy = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
  try {
    // serve had started its mail queue by then, whose loop kept it running after the error.
    for (const command of ["backup-service", "serve"]) {
      const r = await shinkei(
        [command],
        { ...env, METRICS_PORT: String(busy.port), PORT: "0" },
        { timeoutSeconds: 30 },
      );
      expect({ command, code: r.code }).toEqual({ command, code: 2 });
      expect(r.stderr).toContain(`cannot listen on 127.0.0.1:${busy.port} for metrics`);
    }
  } finally {
    busy.stop(true);
  }
});
