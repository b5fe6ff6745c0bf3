import type { MiddlewareHandler } from "hono";
import { ShinkeiError } from "../../src/errors.ts";

const digest = (s: string) => new Bun.CryptoHasher("sha256").update(s).digest();

/** The secret a request carries: `Bearer <token>`, or the password of HTTP Basic (what a browser can send). */
function presented(header: string | undefined): string | undefined {
  const bearer = header?.match(/^Bearer\s+(\S+)$/i)?.[1];
  if (bearer) return bearer;
  const basic = header?.match(/^Basic\s+([A-Za-z0-9+/=]+)$/i)?.[1];
  if (!basic) return undefined;
  const decoded = Buffer.from(basic, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  return colon >= 0 ? decoded.slice(colon + 1) : undefined;
}

/**
 * Let through only requests that carry `token` (when it is undefined, everyone: the caller decides
 * where that is safe). Digests are compared, in constant time, so neither length nor prefix leaks.
 */
export const requireToken =
  (token: string | undefined, variable: "METRICS_TOKEN" | "OPS_TOKEN"): MiddlewareHandler =>
  async (c, next) => {
    if (token !== undefined) {
      const given = presented(c.req.header("authorization"));
      if (given === undefined || !crypto.timingSafeEqual(digest(given), digest(token))) {
        c.header(
          "WWW-Authenticate",
          `Basic realm="shinkei ${variable === "OPS_TOKEN" ? "status" : "metrics"}", charset="UTF-8"`,
        );
        throw new ShinkeiError(
          "UNAUTHORIZED",
          `this needs ${variable} as a Bearer token (or as the password of HTTP Basic)`,
        );
      }
    }
    await next();
  };
