import { Hono } from "hono";
import type { AppEnv, Deps } from "../env.ts";
import { migrationStatus } from "../../src/migrations/migrate.ts";

export function healthRoutes({ sql, readiness }: Deps) {
  return new Hono<AppEnv>()
    .get("/health", (c) => c.json({ status: "ok" }))
    .get("/ready", async (c) => {
      try {
        const m = await migrationStatus(sql);
        const extra = readiness ? await readiness() : {};
        const ready = m.pending.length === 0;
        return c.json({ status: ready ? "ready" : "migrations pending", database: "ok", schemaVersion: m.current, pendingMigrations: m.pending.length, ...extra }, ready ? 200 : 503);
      } catch (e) {
        return c.json({ status: "unavailable", database: "unreachable", error: { code: "NOT_READY", message: (e as Error).message } }, 503);
      }
    });
}
