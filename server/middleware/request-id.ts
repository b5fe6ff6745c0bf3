import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../env.ts";

const SAFE = /^[A-Za-z0-9._-]{1,64}$/;

/** Keep a caller's X-Request-Id when it is harmless (so traces join up), else make one. */
export const requestId = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const given = c.req.header("x-request-id");
  const id = given && SAFE.test(given) ? given : crypto.randomUUID();
  c.set("requestId", id);
  c.header("X-Request-Id", id);
  await next();
};
