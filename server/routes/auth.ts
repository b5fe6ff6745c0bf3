import { Hono } from "hono";
import { deleteCookie, setCookie } from "hono/cookie";
import type { AppEnv, Deps } from "../env.ts";
import { jsonBody } from "../middleware/json-body.ts";
import { requireSession, SESSION_COOKIE } from "../middleware/session.ts";
import { clientInfo } from "../middleware/client.ts";
import { LoginInput, PasswordChangeInput, RegisterInput, parseInput } from "../../src/auth/schemas.ts";
import { revokeSession, revokeUserSessions } from "../../src/auth/sessions.ts";
import { REGISTER_ACCEPTED } from "../../src/auth/password-reset.ts";
import { ShinkeiError } from "../../src/errors.ts";

export function authRoutes({ sql, auth, config, recovery }: Deps) {
  const session = requireSession(sql, auth.sessions);
  // Only the routes that throttle or record sessions need the client's address.
  const client = clientInfo(config.trustProxy, config.trustedProxies);
  const cookie = { httpOnly: true, sameSite: "Lax", secure: config.cookieSecure, path: "/" } as const;

  return new Hono<AppEnv>()
    .post("/register", client, jsonBody(), async (c) => {
      const input = parseInput(RegisterInput, c.get("body"));
      recovery.assertCanRegister();
      // With verification required, a taken address gets the same 202 as a new one (and costs the
      // same hash), so registration tells nobody which addresses have accounts; its owner is told.
      const verify = config.recovery.requireEmailVerification;
      const user = await auth.register(input, c.get("client")).catch(async (e) => {
        if (!(e instanceof ShinkeiError && e.code === "EMAIL_TAKEN")) throw e;
        recovery.duplicateRegistration(input.email);
        if (!verify) throw e;
        await auth.registerHasher.hash(input.password);
        return undefined;
      });
      if (user) recovery.registered(user);
      return verify ? c.json(REGISTER_ACCEPTED, 202) : c.json({ user }, 201);
    })
    .post("/login", client, jsonBody(), async (c) => {
      const result = await auth.login(parseInput(LoginInput, c.get("body")), c.get("client"));
      setCookie(c, SESSION_COOKIE, result.token, { ...cookie, expires: result.expiresAt });
      return c.json(result);
    })
    .get("/me", session, (c) => {
      const s = c.get("session");
      return c.json({ user: s.user, session: { expiresAt: s.expiresAt } });
    })
    .post("/logout", session, async (c) => {
      const id = c.get("session").id;
      await revokeSession(sql, id);
      auth.sessions.forget((s) => s.id === id);
      deleteCookie(c, SESSION_COOKIE, cookie);
      return c.json({ revoked: 1 });
    })
    .post("/logout-all", session, async (c) => {
      const userId = c.get("session").userId;
      const revoked = await revokeUserSessions(sql, userId);
      auth.sessions.forget((s) => s.userId === userId);
      deleteCookie(c, SESSION_COOKIE, cookie);
      return c.json({ revoked });
    })
    .post("/password", session, client, jsonBody(), async (c) => {
      const input = parseInput(PasswordChangeInput, c.get("body"));
      const result = await auth.changePassword(c.get("session"), input, c.get("client"));
      recovery.announcePasswordChange(c.get("session").userId, "from a signed-in session");
      return c.json(result);
    });
}
