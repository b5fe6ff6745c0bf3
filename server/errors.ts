import type { Context } from "hono";
import { ShinkeiError } from "../src/errors.ts";
import { explainDbError } from "../src/db.ts";
import type { AppEnv, Log } from "./env.ts";

/** Every error a client sees has this shape: `{ error: { code, message, ...details } }`. */
export function errorResponse(c: Context<AppEnv>, error: unknown, databaseUrl: string, log: Log): Response {
  const e = explainDbError(error, databaseUrl);
  // Client errors and "try again later" are told as they are; anything else is ours, logged, and vague.
  if (e instanceof ShinkeiError && (e.status < 500 || e.status === 503)) {
    const { retryAfter, ...details } = e.details ?? {};
    if (retryAfter !== undefined) c.header("Retry-After", String(retryAfter));
    return c.json({ error: { code: e.code, message: e.message, ...details } }, e.status as 400);
  }
  log({ level: "error", msg: "unhandled error", requestId: c.get("requestId"), error: (e as Error)?.message ?? String(e) });
  return c.json({ error: { code: "INTERNAL", message: "internal error", requestId: c.get("requestId") } }, 500);
}
