import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { chromium, type Browser, type BrowserContext } from "playwright-core";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { Service } from "./support/process.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";
import { startTestServer } from "./support/server.ts";
import { Terminal } from "./support/pty.ts";
import { shinkei } from "./support/cli.ts";
import { backupHistory, freePort } from "./support/ops.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { readDrill } from "../src/backup/drill.ts";
import { ago } from "../src/metrics/view.ts";

// A real browser, database, S3 server and service: generous on a busy 2-core machine.
setDefaultTimeout(120_000);

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = await Bun.file(CHROMIUM).exists();
if (!haveChromium)
  console.warn(
    `${CHROMIUM} is missing (Debian package chromium; .ci/run installs it): the status page's browser ` +
      `tests are skipped`,
  );
const artifacts = join(import.meta.dir, "artifacts");
const OPS_TOKEN = "ops-token-0123456789abcdef";

let db: TestDatabase;
let s3: TestS3;
let dir: string;
let env: Record<string, string>;
let history: { passed: string; failed: string };
let service: Service;
let url: string;
/*
 * One browser for the file, with a context for JavaScript on and one for it off: a second browser
 * would cost its start again (about a second of CPU), and a context is as separate as a profile.
 * It starts while the backups and drills below are made: its start is seconds of waiting that need
 * not come after them.
 */
let chrome: Promise<Browser> | undefined;
let browsers: Partial<Record<"js" | "noJs", Promise<BrowserContext>>> = {};

beforeAll(async () => {
  if (haveChromium) {
    chrome = launch();
    browsers = {
      js: context(chrome, { javaScriptEnabled: true }),
      noJs: context(chrome, { javaScriptEnabled: false }),
    };
  }
  // Failures surface in the test that awaits them; meanwhile none goes unhandled.
  for (const b of [chrome, ...Object.values(browsers)]) b?.catch(() => {});
  const seeded = async () => {
    db = await freshDatabase("statuspage");
    await migrate(db.sql);
    await seedSample(db.sql, "page");
  };
  [, s3] = await Promise.all([seeded(), TestS3.start()]);
  dir = await tempDir("statuspage");
  env = { DATABASE_URL: db.url, BACKUP_DIR: dir };
  history = await backupHistory(env, s3.env());
  const port = freePort();
  service = await Service.start(["backup-service"], { ...env, ...s3.env(), METRICS_PORT: String(port), OPS_TOKEN });
  await service.waitFor((l) => l.msg === "ops listener");
  url = `http://127.0.0.1:${port}/`;
});
afterAll(async () => {
  // A test closes the context it used; closing the browser closes one whose test did not run (or failed before).
  await (await chrome?.catch(() => undefined))?.close();
  expect(await service.stop()).toBe(0);
  await s3.stop();
  await db.drop();
});

/** Debian's Chromium through playwright-core; never a downloaded browser. */
function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A context of its own (cookies, cache, storage: a fresh profile's worth) in the file's one browser. */
async function context(browser: Promise<Browser>, options: { javaScriptEnabled: boolean }): Promise<BrowserContext> {
  return (await browser).newContext({
    javaScriptEnabled: options.javaScriptEnabled,
    httpCredentials: { username: "ops", password: OPS_TOKEN },
    viewport: { width: 1000, height: 1400 },
  });
}

describe.skipIf(!haveChromium)("the status page in a real browser", () => {
  test("headline, facts and 30-day timeline show the backups, both drills and the off-site copy", async () => {
    const context = await browsers.js!;
    try {
      const page = context.pages()[0] ?? (await context.newPage());
      const response = await page.goto(url);
      expect(response!.status()).toBe(200);
      const passedAt = Date.parse((await readDrill(join(dir, history.passed)))!.at);
      const headline = (await page.textContent("#headline"))!;
      // The page was rendered a moment ago: the figure is now's, or a minute before's.
      expect([
        `Last verified restore: ${ago(Date.now() - passedAt)}`,
        `Last verified restore: ${ago(Date.now() - passedAt - 60_000)}`,
      ]).toContain(headline);
      expect(await page.getAttribute("#headline", "class")).toBe("ok");
      expect(await page.title()).toStartWith("PROBLEM");
      expect(await page.textContent("#last-drill")).toContain(`FAILED less than a minute ago (${history.failed})`);
      expect(await page.textContent("#newest")).toContain(history.failed);
      expect(await page.textContent("#offsite-pending")).toBe("1");
      expect(await page.textContent("#problems")).toContain("users: 3 rows restored, the backup recorded 43");

      const marks = (kind: string) => page.locator(`#timeline circle[data-kind="${kind}"]`).count();
      expect(await marks("backup")).toBe(2);
      expect(await marks("drill-passed")).toBe(1);
      expect(await marks("drill-failed")).toBe(1);
      expect(await marks("offsite")).toBe(1);
      expect(await page.locator(`#timeline circle[data-kind="drill-failed"] title`).textContent()).toContain(
        history.failed,
      );
      const rows = page.locator("#events tbody tr");
      expect(await rows.count()).toBe(5);
      expect(await page.locator('#events tr[data-kind="drill-failed"]').textContent()).toContain(
        "restore drill FAILED",
      );
      expect(await page.locator('#events tr[data-kind="offsite"]').textContent()).toContain(history.passed);
      expect(await page.locator("#size-chart circle").count()).toBe(2);
      expect(await page.locator("#duration-chart circle").count()).toBe(2);

      expect(await page.isVisible("#stale")).toBe(false);
      await mkdir(artifacts, { recursive: true });
      const shot = join(artifacts, "status-page.png");
      await page.screenshot({ path: shot, fullPage: true });
      expect((await stat(shot)).size).toBeGreaterThan(10_000);
    } finally {
      await context.close();
    }
  });

  test("with JavaScript off the page is whole: same figures, no script, a meta refresh, the stale notice", async () => {
    const context = await browsers.noJs!;
    try {
      const page = context.pages()[0] ?? (await context.newPage());
      // CSS animations run without JavaScript; play them fast so the 90 s of "no refresh" pass in a moment.
      const cdp = await context.newCDPSession(page);
      await cdp.send("Animation.enable");
      await cdp.send("Animation.setPlaybackRate", { playbackRate: 1000 });
      await page.goto(url);
      expect(await page.textContent("#headline")).toStartWith("Last verified restore: ");
      expect(await page.locator("#timeline circle").count()).toBe(5);
      expect(await page.locator("#events tbody tr").count()).toBe(5);
      expect(await page.locator("script").count()).toBe(0);
      expect(await page.getAttribute('meta[http-equiv="refresh"]', "content")).toBe("30");
      await page.waitForSelector("#stale", { state: "visible", timeout: 5_000 });
      expect(await page.textContent("#stale")).toContain("This page is stale");
    } finally {
      await context.close();
    }
  });
});

describe("who may see the page", () => {
  test("the ops listener asks for OPS_TOKEN when it is set: Basic for browsers, Bearer for scripts", async () => {
    const none = await fetch(url);
    expect(none.status).toBe(401);
    expect(none.headers.get("www-authenticate")).toBe('Basic realm="shinkei status", charset="UTF-8"');
    expect((await fetch(url, { headers: { authorization: `Bearer ${OPS_TOKEN}` } })).status).toBe(200);
    const page = await fetch(url, { headers: { authorization: `Basic ${btoa(`anyone:${OPS_TOKEN}`)}` } });
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toStartWith("text/html");
    expect(page.headers.get("content-security-policy")).toContain("default-src 'none'");
    expect(await page.text()).toStartWith("<!DOCTYPE html>");
  });

  test("serve shows it on the public port only with OPS_TOKEN set and sent; never without it", async () => {
    const open = await startTestServer(db, { BACKUP_DIR: dir });
    const guarded = await startTestServer(db, { BACKUP_DIR: dir, OPS_TOKEN });
    try {
      expect((await open.api("/")).status).toBe(404);
      expect((await open.api("/", { token: OPS_TOKEN })).status).toBe(404);
      expect((await guarded.api("/")).status).toBe(401);
      const r = await guarded.api("/", { token: OPS_TOKEN });
      expect(r.status).toBe(200);
      expect(await r.text()).toContain('id="headline"');
      // The page's token does not open /metrics: that needs METRICS_TOKEN.
      expect((await guarded.api("/metrics", { token: OPS_TOKEN })).status).toBe(404);
    } finally {
      await open.stop();
      await guarded.stop();
    }
  });
});

describe("shinkei status --watch", () => {
  test("shows the headline figures in a terminal, redraws when a backup lands, and Ctrl-C exits 0", async () => {
    const term = await Terminal.start(["status", "--watch", "--interval", "1s"], {
      ...env,
      ...s3.env(),
      PATH: process.env.PATH!,
    });
    try {
      const first = await term.waitFor("Last verified restore: ");
      expect(first).toMatch(/Last verified restore: (less than a minute|\d+ minutes?) ago/);
      expect(first).toContain(`newest backup   ${history.failed}`);
      expect(first).toContain(`last drill      FAILED`);
      expect(first).toContain("off-site        1 pending");
      expect(first).toContain(`database        ${db.name} on`);
      expect(first).toContain("users: 3 rows restored, the backup recorded 43");
      const taken = await shinkei(["backup"], env);
      expect(taken).toSucceed();
      const name = /backup\s+\S*\/(shinkei_backup_\S+)/.exec(taken.stdout)![1]!;
      const redrawn = await term.waitFor(`newest backup   ${name}`);
      expect(redrawn).toContain("off-site        2 pending");
      await term.ctrlC();
      expect(await term.exitCode()).toBe(0);
    } finally {
      await term.close();
    }
  });

  test("--interval is checked, and goes only with --watch", async () => {
    for (const [args, message] of [
      [["status", "--watch", "--interval", "100ms"], "--interval must be a duration from 1s to 1h"],
      [["status", "--interval", "5s"], "--interval goes with --watch"],
      [["status", "--watch", "--json"], "--watch and --json do not go together"],
    ] as const) {
      const r = await shinkei([...args], env);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(message);
    }
  });
});
