/**
 * Metrics and the status page under load. Part of `bun run bench`; alone:
 *   bun run test/bench/metrics.ts      (builds dist/shinkei; writes test/bench/METRICS.md)
 * 1. GET /api/v1/auth/me req/s with a /metrics scrape every second vs none, alternating in one run.
 * 2. The status page's server time with 1,000 backups in the folder: every request reads the folder
 *    (no cache) in-process, and the served page through the ops listener as Prometheus-era users hit it.
 */
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  arg,
  buildShinkei,
  freshDatabase,
  median,
  type NoteRow,
  noteLine,
  noteReport,
  registerAndLogin,
  serverUrl,
  shinkeiBin,
  startHelper,
  timed,
  writeResults,
  wrk,
} from "./tools.ts";
import { backupName } from "../../src/storage/naming.ts";
import { loadConfig } from "../../src/config/index.ts";
import { Metrics } from "../../src/metrics/registry.ts";
import { readSnapshot } from "../../src/metrics/snapshot.ts";
import { createOpsApp } from "../../server/ops/app.tsx";
import { freePort } from "../support/ops.ts";

const BACKUPS = 1000;
const TOKEN = "bench-metrics-token-0123456789";

/**
 * 1,000 backups over the last 60 days: copies of one real backup, with manifests and, for every
 * tenth, a drill record.
 */
async function fillFolder(bin: string, env: Record<string, string>, dir: string) {
  const r = await timed([bin, "backup"], { env });
  const path = r.stdout.match(/^backup\s+(\S+)$/m)![1]!;
  const manifest = JSON.parse(await readFile(`${path}.manifest.json`, "utf8"));
  const now = Date.now();
  for (let i = 1; i <= BACKUPS; i++) {
    const at = new Date(now - (i * (60 * 86_400_000)) / BACKUPS);
    const name = backupName(at);
    await copyFile(path, join(dir, name));
    await writeFile(
      join(dir, `${name}.manifest.json`),
      JSON.stringify({ ...manifest, file: name, createdAt: at.toISOString(), durationMs: 100 + (i % 50) }),
    );
    if (i % 10 === 0) {
      await writeFile(
        join(dir, `${name}.drill.json`),
        JSON.stringify({
          file: name,
          passed: i % 70 !== 0,
          at: new Date(at.getTime() + 60_000).toISOString(),
          durationMs: 900,
          server: "bench",
          differences: i % 70 ? [] : ["users: 1 rows restored, the backup recorded 2"],
          notes: [],
        }),
      );
    }
  }
}

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

export async function benchMetrics(bin: string, serverUrl: string, seconds = 6, rounds = 5): Promise<NoteRow[]> {
  const db = "shinkei_bench_metrics";
  const { admin, url } = await freshDatabase(serverUrl, db);
  const dir = join(tmpdir(), `shinkei-bench-metrics-${process.pid}`);
  await mkdir(dir, { recursive: true });
  // One the OS just gave out: a port made from the pid fell in the ephemeral range, where a client's
  // connection could hold it (the listener then failed, once in CI).
  const opsPort = freePort();
  const env = {
    DATABASE_URL: url,
    BACKUP_DIR: dir,
    HOST: "127.0.0.1",
    PORT: "0",
    COOKIE_SECURE: "false",
    METRICS_TOKEN: TOKEN,
    METRICS_PORT: String(opsPort),
  };
  await timed([bin, "migrate"], { env });
  await fillFolder(bin, env, dir);
  const api = await startHelper([bin, "serve"], { env, until: (l) => l.msg === "listening" });
  const base = String(api.ready.url);
  try {
    const token = await registerAndLogin(base, {
      email: "me@bench.test",
      password: "benchmark password",
      name: "Bench",
    });
    const me = () =>
      wrk(`${base}/api/v1/auth/me`, { connections: 16, seconds, headers: { Authorization: `Bearer ${token}` } });

    // Alternate without and with the scraper, so drift on a shared machine falls on both sides.
    const none: number[] = [],
      scraped: number[] = [];
    const scrapeMs: number[] = [];
    for (let i = 0; i < rounds; i++) {
      none.push((await me()).rps);
      let on = true;
      const scraper = (async () => {
        while (on) {
          const t = performance.now();
          const r = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
          if (r.status !== 200) throw new Error(`scrape answered ${r.status}`);
          await r.text();
          scrapeMs.push(performance.now() - t);
          await Bun.sleep(1000);
        }
      })();
      scraped.push((await me()).rps);
      on = false;
      await scraper;
    }
    const ratio = median(scraped) / median(none);

    // The page as served (snapshot cached for 1.5 s), through the ops listener.
    const page = await wrk(`http://127.0.0.1:${opsPort}/`, { connections: 4, seconds });

    // Server time with no cache at all: every request lists and reads 1,000 manifests and drill records.
    const config = loadConfig(env);
    const app = createOpsApp({
      config,
      metrics: new Metrics(),
      snapshot: () => readSnapshot(dir, undefined),
      log: () => {},
    });
    const times: number[] = [];
    for (let i = 0; i < 100; i++) {
      const t = performance.now();
      const r = await app.request("/");
      await r.text();
      times.push(performance.now() - t);
    }
    return [
      {
        name: "GET /me req/s: scrape every 1 s vs none",
        ours: `${median(scraped).toFixed(0)} vs ${median(none).toFixed(0)} (${ratio.toFixed(3)}x)`,
        goal: "≥ 0.98x",
        met: ratio >= 0.98,
        raw: { none, scraped, scrapes: scrapeMs.length },
      },
      {
        name: "one /metrics scrape under that load: p50 / max",
        ours: `${median(scrapeMs).toFixed(1)} / ${Math.max(...scrapeMs).toFixed(1)} ms`,
        goal: "",
        met: null,
        raw: { scrapeMs },
      },
      {
        name: `status page, ${BACKUPS} backups, uncached: p50 / p99`,
        ours: `${pct(times, 0.5).toFixed(1)} / ${pct(times, 0.99).toFixed(1)} ms`,
        goal: "",
        met: null,
        raw: { p50: pct(times, 0.5), p99: pct(times, 0.99), n: times.length },
      },
      {
        name: `status page, ${BACKUPS} backups, served (wrk -c4): p50 / p99`,
        ours: `${page.p50ms.toFixed(1)} / ${page.p99ms.toFixed(1)} ms, ${page.rps.toFixed(0)} req/s`,
        goal: "",
        met: null,
        raw: { ...page },
      },
    ];
  } finally {
    api.proc.kill("SIGTERM");
    await api.proc.exited;
    await admin`drop database if exists ${admin(db)} with (force)`;
    await admin.end();
  }
}

if (import.meta.main) {
  await buildShinkei();
  const rows = await benchMetrics(shinkeiBin, serverUrl, Number(arg("seconds", "6")), Number(arg("rounds", "5")));
  for (const r of rows) console.log(noteLine(r, 52, 30));
  await writeResults(
    join(import.meta.dir, "METRICS.md"),
    noteReport(
      "Metrics and status page benchmark",
      `Measured by \`bun run test/bench/metrics.ts\` (also part of \`bun run bench\`). \`GET /api/v1/auth/me\`
under wrk (16 connections, 6 s), five rounds alternating no scraper and a \`/metrics\` scrape every
second (medians); the status page with ${BACKUPS} backups in BACKUP_DIR (every tenth with a drill
record), once read from the folder on every request (in-process, 100 sequential requests), once as
served by the ops listener with its 1.5 s snapshot cache.`,
      rows,
    ),
  );
}
