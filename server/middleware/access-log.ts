import type { MiddlewareHandler } from "hono";
import type { AppEnv, Log } from "../env.ts";

/** One JSON line per request. The path only: query strings and bodies may carry secrets. */
export const accessLog = (log: Log): MiddlewareHandler<AppEnv> => async (c, next) => {
  const start = performance.now();
  await next();
  log({
    level: "info",
    msg: "request",
    method: c.req.method,
    path: c.req.path,
    status: c.res.status,
    durationMs: Math.round((performance.now() - start) * 10) / 10,
    requestId: c.get("requestId"),
  });
};
