import type { MiddlewareHandler } from "hono";
import { getConnInfo } from "hono/bun";
import type { AppEnv } from "../env.ts";

/**
 * The client's address and user agent. X-Forwarded-For is believed only when TRUST_PROXY is on:
 * otherwise any client could pick a fresh address per request and slip the per-address limit.
 */
export const clientInfo = (trustProxy: boolean): MiddlewareHandler<AppEnv> => async (c, next) => {
  let ip: string | undefined;
  if (trustProxy) ip = c.req.header("x-forwarded-for")?.split(",")[0]?.trim() || undefined;
  if (!ip) {
    try {
      ip = getConnInfo(c).remote.address;
    } catch {
      ip = undefined; // app.request() in tests has no socket
    }
  }
  c.set("client", { ip: ip?.slice(0, 64), userAgent: c.req.header("user-agent") });
  await next();
};
