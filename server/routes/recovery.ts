import { Hono } from "hono";
import type { AppEnv, Deps } from "../env.ts";
import { jsonBody } from "../middleware/json-body.ts";
import { clientInfo } from "../middleware/client.ts";
import { EmailInput, ResetConfirmInput, VerifyEmailInput, parseInput } from "../../src/auth/schemas.ts";
import { RESET_ACCEPTED, VERIFY_ACCEPTED } from "../../src/auth/password-reset.ts";

/** Password reset and email verification by mailed code (mounted beside the other auth routes). */
export function recoveryRoutes({ recovery, config }: Deps) {
  const client = clientInfo(config.trustProxy, config.trustedProxies);
  return new Hono<AppEnv>()
    .post("/password-reset", client, jsonBody(), async (c) => {
      await recovery.requestReset(parseInput(EmailInput, c.get("body")).email, c.get("client"));
      return c.json(RESET_ACCEPTED, 202);
    })
    .post("/password-reset/confirm", client, jsonBody(), async (c) => {
      return c.json(await recovery.confirmReset(parseInput(ResetConfirmInput, c.get("body")), c.get("client")));
    })
    .post("/verify-email", client, jsonBody(), async (c) => {
      return c.json(await recovery.verifyEmail(parseInput(VerifyEmailInput, c.get("body")), c.get("client")));
    })
    .post("/verify-email/resend", client, jsonBody(), async (c) => {
      await recovery.resendVerification(parseInput(EmailInput, c.get("body")).email, c.get("client"));
      return c.json(VERIFY_ACCEPTED, 202);
    });
}
