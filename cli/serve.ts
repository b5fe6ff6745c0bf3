import type { Command } from "./command.ts";
import { startServer } from "../server/serve.ts";
import { jsonLog } from "../server/env.ts";

export const serveCommand: Command = {
  name: "serve",
  summary: "run the auth server (HOST, PORT; applies migrations unless MIGRATE_ON_START=false)",
  help: `Usage: shinkei serve

Runs the auth server on HOST:PORT (default 0.0.0.0:8000). Pending migrations are applied
first unless MIGRATE_ON_START=false. SIGTERM or Ctrl-C finishes in-flight requests, then exits.

Endpoints: POST /api/v1/auth/register, /login, /logout, /logout-all, /password;
GET /api/v1/auth/me, /api/v1/worlds, /health, /ready.

Options:
  -h, --help   show this help`,
  async run(ctx) {
    const running = await startServer(ctx.config);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        jsonLog({ level: "info", msg: "shutting down", signal });
        running.stop().then(resolve, resolve);
      };
      process.once("SIGTERM", () => stop("SIGTERM"));
      process.once("SIGINT", () => stop("SIGINT"));
    });
    return 0;
  },
};
