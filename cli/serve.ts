import type { Command, Context } from "./command.ts";
import { untilSignal } from "./signals.ts";
import { jsonLog } from "../src/log.ts";
import { connect, describeTarget } from "../src/pg/db.ts";
import { startScheduler, type Scheduler } from "../src/service/schedule.ts";
import { newestGood } from "../src/backup/freshness.ts";
import { archiveWindow } from "../src/wal/status.ts";
import { archiveTrust, type ArchiveTrust } from "../src/wal/trust.ts";
import { walRoot } from "../src/wal/archive.ts";

/** The point-in-time window for /ready, when BACKUP_DIR holds a WAL archive; read at most every 10 s. */
function cachedWindow(backupDir: string, trust: ArchiveTrust) {
  let at = 0;
  let value: Record<string, unknown> = {};
  return async () => {
    if (Date.now() - at < 10_000) return value;
    at = Date.now();
    const exists = await Bun.file(walRoot(backupDir))
      .stat()
      .then(
        () => true,
        () => false,
      );
    value = exists
      ? await archiveWindow(backupDir, trust).then(
          (w) => ({ pitr: { ...w.window, gaps: w.gaps.length } }),
          () => ({}),
        )
      : {};
    return value;
  };
}

export const serveCommand: Command = {
  name: "serve",
  description: `Runs the auth server on HOST:PORT (default 0.0.0.0:8000). Pending migrations are applied
first unless MIGRATE_ON_START=false. With BACKUP_IN_SERVER=true it also runs the backup
schedule in-process (see shinkei backup-service). SIGTERM or Ctrl-C finishes in-flight
requests, then exits.

Endpoints: POST /api/v1/auth/register, /login, /logout, /logout-all, /password,
/password-reset, /password-reset/confirm, /verify-email, /verify-email/resend;
GET /api/v1/auth/me, /api/v1/worlds, /health, /ready.

Mail (reset and verification codes) goes out over SMTP_URL; without it, development
writes each message to the log, and anywhere else those routes answer 503 MAIL_DISABLED
(the server says so when it starts).`,
  subcommands: [
    {
      default: true,
      summary: "run the auth server (HOST, PORT; applies migrations unless MIGRATE_ON_START=false)",
      options: {},
      run: serve,
    },
  ],
};

async function serve(ctx: Context): Promise<number> {
  const { config } = ctx;
  const pitr = cachedWindow(config.backupDir, archiveTrust(config.backup.age));
  const readiness = async () => {
    const f = await newestGood(config.backupDir, describeTarget(config.databaseUrl), config.backup.age?.manifestKey);
    // Anyone can ask /ready: the age says whether backups run; the file's name is not theirs to learn.
    return { backup: f.newest ? { ageSeconds: Math.round(f.ageMs! / 1000) } : null, ...(await pitr()) };
  };
  // The server (Hono, its routes, metrics, mail) loads here, not with every command: see cli/main.ts.
  const { startServer } = await import("../server/serve.ts");
  const running = await startServer(config, { readiness });
  let scheduler: Scheduler | undefined;
  let schedulerSql: ReturnType<typeof connect> | undefined;
  if (config.backup.inServer) {
    schedulerSql = connect(config.databaseUrl, { max: 3 });
    scheduler = startScheduler({ sql: schedulerSql, config, log: jsonLog });
  }
  const signal = await untilSignal();
  jsonLog({ level: "info", msg: "shutting down", signal });
  await scheduler?.stop();
  await schedulerSql?.end({ timeout: 5 });
  await running.stop();
  return 0;
}
