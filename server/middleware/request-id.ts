import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../env.ts";

const SAFE = /^[A-Za-z0-9._-]{1,64}$/;
// A random per-process prefix and a counter: unique across replicas, and far cheaper than a UUID per request.
const prefix = Buffer.from(crypto.getRandomValues(new Uint8Array(6))).toString("base64url");
let counter = 0;

/** Keep a caller's X-Request-Id when it is harmless (so traces join up), else make one. */
export const requestId = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const given = c.req.header("x-request-id");
  const id = given && SAFE.test(given) ? given : `${prefix}-${(++counter).toString(36)}`;
  c.set("requestId", id);
  c.header("X-Request-Id", id);
  await next();
};
