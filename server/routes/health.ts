import { Hono } from "hono";
import type { AppEnv, Deps } from "../env.ts";
import { migrationStatus } from "../../src/migrations/migrate.ts";
import { hiddenError } from "../errors.ts";

export function healthRoutes({ sql, readiness, config, log }: Deps) {
  return new Hono<AppEnv>()
    .get("/health", (c) => c.json({ status: "ok" }))
    .get("/ready", async (c) => {
      try {
        const m = await migrationStatus(sql);
        const extra = readiness ? await readiness() : {};
        const ready = m.pending.length === 0;
        return c.json(
          {
            status: ready ? "ready" : "migrations pending",
            database: "ok",
            schemaVersion: m.current,
            pendingMigrations: m.pending.length,
            ...extra,
          },
          ready ? 200 : 503,
        );
      } catch (e) {
        // Monitors see that we are not ready and the request id; the log line says why.
        const { error } = hiddenError(c, e, config.databaseUrl, log);
        if (error.code === "DB_UNREACHABLE") c.header("Retry-After", "5");
        return c.json(
          { status: "unavailable", database: error.code === "DB_UNREACHABLE" ? "unreachable" : "error", error },
          503,
        );
      }
    });
}
