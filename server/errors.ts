import type { Context } from "hono";
import { ShinkeiError } from "../src/errors.ts";
import { explainDbError } from "../src/pg/db.ts";
import type { AppEnv, Log } from "./env.ts";

/** Our own words about a request, safe to show as they are: the client's mistakes and our "busy". */
const told = (e: unknown): e is ShinkeiError =>
  e instanceof ShinkeiError && (e.status < 500 || e.code === "BUSY" || e.code === "NOT_READY");

/**
 * Anything else is logged in full with the request id, and the client gets only a code, a plain
 * message and that id: host, port, database, user and driver messages stay in the log.
 */
export function hiddenError(c: Context<AppEnv>, error: unknown, databaseUrl: string, log: Log) {
  const e = explainDbError(error, databaseUrl);
  const requestId = c.get("requestId");
  const unavailable = e instanceof ShinkeiError && e.status === 503;
  log({
    level: "error",
    msg: unavailable ? "service unavailable" : "unhandled error",
    requestId,
    code: e instanceof ShinkeiError ? e.code : undefined,
    error: (e as Error)?.message ?? String(e),
    cause: ((e as Error)?.cause as Error | undefined)?.message,
  });
  return unavailable
    ? {
        status: 503 as const,
        error: { code: e.code, message: "the service is unavailable; try again shortly", requestId },
      }
    : { status: 500 as const, error: { code: "INTERNAL", message: "internal error", requestId } };
}

/** Every error a client sees has this shape: `{ error: { code, message, ...details } }`. */
export function errorResponse(c: Context<AppEnv>, error: unknown, databaseUrl: string, log: Log): Response {
  if (told(error)) {
    const { retryAfter, ...details } = error.details ?? {};
    if (retryAfter !== undefined) c.header("Retry-After", String(retryAfter));
    return c.json({ error: { code: error.code, message: error.message, ...details } }, error.status as 400);
  }
  const hidden = hiddenError(c, error, databaseUrl, log);
  if (hidden.status === 503) c.header("Retry-After", "5");
  return c.json({ error: hidden.error }, hidden.status);
}
