/** @jsxImportSource hono/jsx */
import { Hono } from "hono";
import { html } from "hono/html";
import { hostname } from "node:os";
import type { Config } from "../../src/config/index.ts";
import type { Log } from "../../src/log.ts";
import { Metrics, type HashLoad } from "../../src/metrics/registry.ts";
import {
  cached,
  folderSnapshot,
  readPitrSnapshot,
  type PitrSnapshot,
  type Snapshot,
} from "../../src/metrics/snapshot.ts";
import { archiveSource, dumpSource, receiverSource } from "../../src/metrics/sources.ts";
import { archiveTrust } from "../../src/wal/trust.ts";
import { describeTarget, type Sql } from "../../src/pg/db.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { statusView } from "../../src/metrics/view.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { errorResponse } from "../errors.ts";
import { requireToken } from "./guard.ts";
import { StatusPage, UnreadablePage } from "./page.tsx";

export type OpsDeps = {
  config: Config;
  metrics: Metrics;
  snapshot: () => Promise<Snapshot>;
  /** With the WAL archive on: the archive as the page shows it. */
  pitrSnapshot?: () => Promise<PitrSnapshot>;
  log: Log;
};

/** GET /metrics (Prometheus text) and GET / (the status page). Both read only. */
export function opsRoutes(
  { config, metrics, snapshot, pitrSnapshot }: OpsDeps,
  mount: { metrics: boolean; page: boolean },
) {
  const app = new Hono();
  if (mount.metrics) {
    app.get("/metrics", requireToken(config.ops?.metricsToken, "METRICS_TOKEN"), async (c) => {
      const body = await metrics.text();
      return c.body(body, 200, { "Content-Type": metrics.contentType, "Cache-Control": "no-store" });
    });
  }
  if (mount.page) {
    app.get("/", requireToken(config.ops?.opsToken, "OPS_TOKEN"), async (c) => {
      c.header("Cache-Control", "no-store");
      c.header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
      const read = await snapshot().then(
        (s) => ({ s }),
        (e: Error) => ({ error: e.message }),
      );
      // The one page an operator opens when something is wrong must say what, not "internal error".
      if ("error" in read)
        return c.html(html`<!DOCTYPE html>${<UnreadablePage error={read.error} dir={config.backupDir} />}`, 503);
      const pitr = pitrSnapshot
        ? await pitrSnapshot().then(
            (p) => ({ p }),
            (e: Error) => ({ error: e.message }),
          )
        : null;
      const view = statusView(read.s, config.backup, new Date(), pitr && "p" in pitr ? pitr.p : null);
      if (pitr && "error" in pitr)
        view.problems.unshift({ level: "bad", text: `The WAL archive cannot be read: ${pitr.error}` });
      return c.html(html`<!DOCTYPE html>${<StatusPage view={view} host={hostname()} />}`);
    });
  }
  return app;
}

/**
 * Metrics and snapshot for a process whose configuration asks for any of them (METRICS_PORT, or a
 * token that mounts them on the public port); undefined otherwise, so nothing is counted in vain.
 */
export function createOps(
  config: Config,
  log: Log,
  options: { hashLoad?: HashLoad; sql?: Sql } = {},
): OpsDeps | undefined {
  const o = config.ops;
  if (!o || (o.port === undefined && !o.metricsToken && !o.opsToken)) return undefined;
  // The newest good backup is this database's: a folder may hold another's (as `backup check` reads it).
  const snapshot = folderSnapshot(config.backupDir, offsiteStore(config), {
    owner: describeTarget(config.databaseUrl),
    manifestKey: config.backup.age?.manifestKey,
  });
  const sources = [dumpSource(snapshot, config.backup)];
  // Base backups, PITR drills and the recoverable window, where the WAL archive runs.
  if (config.wal.archive === "stream") {
    sources.push(
      archiveSource(config.backupDir, archiveTrust(config.backup.age), config.backup, config.wal.maxLagMs, { config }),
    );
    // The receiver's lag and the slot come from the database, through the process's own pool.
    if (options.sql) sources.push(receiverSource(config, options.sql));
  }
  const metrics = new Metrics({ sources, hashLoad: options.hashLoad });
  const pitrSnapshot =
    config.wal.archive === "stream"
      ? cached(() => readPitrSnapshot(config.backupDir, archiveTrust(config.backup.age)))
      : undefined;
  return { config, metrics, snapshot, pitrSnapshot, log };
}

/** The app of the ops listener (METRICS_PORT): loopback by default, tokens optional there. */
export function createOpsApp(deps: OpsDeps) {
  const app = new Hono();
  app.route("/", opsRoutes(deps, { metrics: true, page: true }));
  app.notFound((c) =>
    c.json(
      { error: { code: "NOT_FOUND", message: `no route for ${c.req.method} ${c.req.path}; try /metrics or /` } },
      404,
    ),
  );
  app.onError((e, c) => errorResponse(c as never, e, deps.config.databaseUrl, deps.log));
  return app;
}

/** Listen on METRICS_HOST:METRICS_PORT; a port in use is a clear error, not a stack trace. */
export function startOpsServer(deps: OpsDeps): { url: string; port: number; stop(): Promise<void> } {
  const { host, port } = deps.config.ops ?? { host: "127.0.0.1" };
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({ hostname: host, port: port ?? 0, fetch: createOpsApp(deps).fetch });
  } catch (e) {
    throw new ShinkeiError("LISTEN_FAILED", `cannot listen on ${host}:${port} for metrics: ${(e as Error).message}`, {
      hint: "Pick a free METRICS_PORT, or unset it to turn the ops listener off.",
    });
  }
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${server.port}`;
  deps.log({ level: "info", msg: "ops listener", url, metrics: `${url}/metrics`, statusPage: `${url}/` });
  const loopback = host === "localhost" || host === "::1" || host.startsWith("127.");
  if (!loopback && (!deps.config.ops?.metricsToken || !deps.config.ops?.opsToken)) {
    deps.log({
      level: "warn",
      msg:
        "the ops listener is reachable from other machines without a token; set METRICS_TOKEN and OPS_TOKEN, " +
        "or keep METRICS_HOST on 127.0.0.1",
      host,
    });
  }
  return { url, port: server.port!, stop: () => server.stop() };
}
