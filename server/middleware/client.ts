import type { MiddlewareHandler } from "hono";
import { getConnInfo } from "hono/bun";
import type { BlockList } from "node:net";
import type { AppEnv } from "../env.ts";
import { clientAddress } from "../../src/config/net.ts";

/**
 * The client's address and user agent. X-Forwarded-For is believed only when TRUST_PROXY is on,
 * and then only the hops our own proxies (TRUSTED_PROXIES) added: otherwise any client could pick
 * a fresh address per request and slip the per-address limits.
 */
export const clientInfo =
  (trustProxy: boolean, trustedProxies: BlockList): MiddlewareHandler<AppEnv> =>
  async (c, next) => {
    let peer: string | undefined;
    try {
      peer = getConnInfo(c).remote.address;
    } catch {
      peer = undefined; // app.request() in tests has no socket
    }
    const ip = clientAddress(peer, trustProxy ? c.req.header("x-forwarded-for") : undefined, trustedProxies);
    c.set("client", { ip: ip?.slice(0, 64), userAgent: c.req.header("user-agent") });
    await next();
  };
