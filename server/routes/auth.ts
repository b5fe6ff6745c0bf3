import { Hono } from "hono";
import { deleteCookie, setCookie } from "hono/cookie";
import type { AppEnv, Deps } from "../env.ts";
import { jsonBody } from "../middleware/json-body.ts";
import { requireSession, SESSION_COOKIE } from "../middleware/session.ts";
import { LoginInput, PasswordChangeInput, RegisterInput, parseInput } from "../../src/auth/schemas.ts";
import { revokeSession, revokeUserSessions } from "../../src/auth/sessions.ts";

export function authRoutes({ sql, auth, config }: Deps) {
  const session = requireSession(sql);
  const cookie = { httpOnly: true, sameSite: "Lax", secure: config.cookieSecure, path: "/" } as const;

  return new Hono<AppEnv>()
    .post("/register", jsonBody(), async (c) => {
      const user = await auth.register(parseInput(RegisterInput, c.get("body")));
      return c.json({ user }, 201);
    })
    .post("/login", jsonBody(), async (c) => {
      const result = await auth.login(parseInput(LoginInput, c.get("body")), c.get("client"));
      setCookie(c, SESSION_COOKIE, result.token, { ...cookie, expires: result.expiresAt });
      return c.json(result);
    })
    .get("/me", session, (c) => {
      const s = c.get("session");
      return c.json({ user: s.user, session: { expiresAt: s.expiresAt } });
    })
    .post("/logout", session, async (c) => {
      await revokeSession(sql, c.get("session").id);
      deleteCookie(c, SESSION_COOKIE, cookie);
      return c.json({ revoked: 1 });
    })
    .post("/logout-all", session, async (c) => {
      const revoked = await revokeUserSessions(sql, c.get("session").userId);
      deleteCookie(c, SESSION_COOKIE, cookie);
      return c.json({ revoked });
    })
    .post("/password", session, jsonBody(), async (c) => {
      const input = parseInput(PasswordChangeInput, c.get("body"));
      const result = await auth.changePassword(c.get("session"), input, c.get("client"));
      return c.json(result);
    });
}
