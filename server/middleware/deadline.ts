import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../env.ts";
import { ShinkeiError } from "../../src/errors.ts";

/**
 * Answer 503 when a request has waited `ms` without an answer. postgres.js on Bun can leave a query
 * unsettled for good when the server goes away under it (a fast shutdown ends the connection while
 * the query is written, or a new connection meets "the database system is shutting down"): without
 * this the client waits until Bun.serve drops the socket (10 s) and gets a reset, not an answer.
 * Everything here that can wait that long waits on the database (hashing sheds well before), so
 * the answer is DB_UNREACHABLE, with Retry-After. The late work still ends on its own; its result is dropped.
 */
export const deadline =
  (ms: number): MiddlewareHandler<AppEnv> =>
  async (c, next) => {
    let timer: Timer | undefined;
    const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), ms)));
    const work = next().then(() => "done" as const);
    const first = await Promise.race([work, late]).finally(() => clearTimeout(timer));
    if (first === "late") {
      work.catch(() => {});
      throw new ShinkeiError("DB_UNREACHABLE", `no answer within ${ms} ms: the database did not answer in time`);
    }
  };
