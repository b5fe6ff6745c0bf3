import { Hono } from "hono";
import type { AppEnv, Deps } from "./env.ts";
import { ShinkeiError } from "../src/errors.ts";
import { errorResponse } from "./errors.ts";
import { requestId } from "./middleware/request-id.ts";
import { accessLog } from "./middleware/access-log.ts";
import { securityHeaders } from "./middleware/security-headers.ts";
import { deadline } from "./middleware/deadline.ts";

/** Below Bun.serve's 10 s idle timeout: a request stuck on a vanished database still gets its 503. */
export const REQUEST_DEADLINE_MS = 8000;

/**
 * A login may wait on purpose (LOGIN_ACCOUNT_DELAY, then up to HASH_WAIT_BUDGET for a hash): the
 * deadline leaves room for both, so a configured wait never reads as an unreachable database.
 * serve.ts sets Bun.serve's idle timeout above it.
 */
export function requestDeadlineMs(config: Deps["config"]): number {
  return Math.max(REQUEST_DEADLINE_MS, config.login.accountDelayMs + config.hashing.waitBudgetMs + 4000);
}
import { authRoutes } from "./routes/auth.ts";
import { recoveryRoutes } from "./routes/recovery.ts";
import { worldRoutes } from "./routes/worlds.ts";
import { healthRoutes } from "./routes/health.ts";
import { httpMetrics } from "./ops/http-metrics.ts";
import { opsRoutes } from "./ops/app.tsx";

export function createApp(deps: Deps) {
  const app = new Hono<AppEnv>();
  if (deps.ops) app.use(httpMetrics(deps.ops.metrics));
  app.use(
    requestId(),
    accessLog(deps.log, deps.config.accessLog),
    securityHeaders(),
    deadline(requestDeadlineMs(deps.config)),
  );
  app.route("/", healthRoutes(deps));
  // On the public port only behind their tokens; without one they live on the ops listener alone.
  if (deps.ops)
    app.route(
      "/",
      opsRoutes(deps.ops, { metrics: !!deps.config.ops?.metricsToken, page: !!deps.config.ops?.opsToken }),
    );
  app.route("/api/v1/auth", authRoutes(deps));
  app.route("/api/v1/auth", recoveryRoutes(deps));
  app.route("/api/v1/worlds", worldRoutes(deps));
  app.notFound((c) =>
    errorResponse(
      c,
      new ShinkeiError("NOT_FOUND", `no route for ${c.req.method} ${c.req.path}`),
      deps.config.databaseUrl,
      deps.log,
    ),
  );
  app.onError((error, c) => errorResponse(c, error, deps.config.databaseUrl, deps.log));
  return app;
}
