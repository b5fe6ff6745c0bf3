import type { MiddlewareHandler } from "hono";
import type { AppEnv, Log } from "../env.ts";
import type { AccessLogConfig } from "../../src/config/server.ts";

const PROBES = new Set(["/health", "/ready"]);

/**
 * One JSON line per request the configuration asks for (see AccessLogConfig). The path only:
 * query strings and bodies may carry secrets. At tens of thousands of requests a second a line
 * each is hundreds of megabytes a minute, most of it passing health checks.
 */
export const accessLog =
  (log: Log, config: AccessLogConfig = { mode: "all", probes: false }): MiddlewareHandler<AppEnv> =>
  async (c, next) => {
    if (config.mode === "off") return next();
    const start = performance.now();
    await next();
    const status = c.res.status;
    const failed = status >= 400;
    if (config.mode === "errors" && !failed) return;
    if (!config.probes && !failed && PROBES.has(c.req.path)) return;
    log({
      level: "info",
      msg: "request",
      method: c.req.method,
      path: c.req.path,
      status,
      durationMs: Math.round((performance.now() - start) * 10) / 10,
      requestId: c.get("requestId"),
    });
  };
