import type { MiddlewareHandler } from "hono";
import { getCookie } from "hono/cookie";
import type { Sql } from "../../src/pg/db.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { findSession, type SessionCache } from "../../src/auth/sessions.ts";
import type { AppEnv } from "../env.ts";

export const SESSION_COOKIE = "shinkei_session";

/** A live session from `Authorization: Bearer` or the session cookie, else 401. */
export const requireSession =
  (sql: Sql, cache: SessionCache): MiddlewareHandler<AppEnv> =>
  async (c, next) => {
    const header = c.req.header("authorization");
    const token = header?.match(/^Bearer\s+(\S+)$/i)?.[1] ?? getCookie(c, SESSION_COOKIE);
    let session = token ? cache.get(token) : undefined;
    if (!session && token) {
      session = await findSession(sql, token);
      if (session) cache.set(token, session);
    }
    if (!session) throw new ShinkeiError("UNAUTHORIZED", "sign in first: no valid session");
    c.set("session", session);
    await next();
  };
