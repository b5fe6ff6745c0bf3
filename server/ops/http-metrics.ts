import type { Context, MiddlewareHandler } from "hono";
import { matchedRoutes } from "hono/route";
import type { LoginOutcome, Metrics } from "../../src/metrics/registry.ts";

/** The route pattern that answered ("/api/v1/worlds/:id"), never the raw path: bounded labels, no ids. */
function routeOf(c: Context): string {
  const routes = matchedRoutes(c);
  for (let i = routes.length - 1; i >= 0; i--) if (routes[i]!.method !== "ALL") return routes[i]!.path;
  return "unmatched";
}

const LOGIN_ROUTE = "/api/v1/auth/login";

/** What a login's status says about it; the account and address stay out of the metrics. */
function loginOutcome(status: number): LoginOutcome {
  if (status === 200) return "success";
  if (status === 401) return "invalid";
  if (status === 429) return "throttled";
  return "other";
}

/** Count and time every request by route pattern and status; login answers also count by outcome. */
export const httpMetrics =
  (metrics: Metrics): MiddlewareHandler =>
  async (c, next) => {
    const start = performance.now();
    await next();
    const route = routeOf(c);
    const status = c.res.status;
    metrics.observeHttp(c.req.method, route, status, (performance.now() - start) / 1000);
    if (route === LOGIN_ROUTE && c.req.method === "POST") metrics.login(loginOutcome(status));
  };
