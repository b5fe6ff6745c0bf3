import type { Config } from "../src/config/index.ts";
import { connect, ensureDatabase, guarded } from "../src/pg/db.ts";
import { migrateUp } from "../src/guarded/migrate-up.ts";
import { AuthService } from "../src/auth/service.ts";
import { AccountRecovery, type Clock } from "../src/auth/password-reset.ts";
import { createMailQueue } from "../src/mail/index.ts";
import { pruneHistory } from "../src/pg/history.ts";
import { createApp, requestDeadlineMs } from "./app.ts";
import { jsonLog, type Deps, type Log } from "./env.ts";
import { createOps, startOpsServer } from "./ops/app.tsx";

export type Running = { url: string; port: number; recovery: AccountRecovery; opsUrl?: string; stop(): Promise<void> };

/** Connect, migrate (unless MIGRATE_ON_START=false), and listen. `stop()` drains requests, then the pool. */
export async function startServer(
  config: Config,
  options: { log?: Log; readiness?: Deps["readiness"]; clock?: Clock } = {},
): Promise<Running> {
  const log = options.log ?? jsonLog;
  if (config.migrateOnStart) {
    await ensureDatabase(config.databaseUrl);
  }
  const sql = connect(config.databaseUrl, { max: 10 });
  try {
    await guarded(config.databaseUrl, async () => {
      if (config.migrateOnStart) {
        const applied = await migrateUp(config.databaseUrl, sql);
        for (const m of applied) log({ level: "info", msg: "migration applied", version: m.version, name: m.name });
      } else {
        await sql`select 1`;
      }
    });
  } catch (e) {
    await sql.end({ timeout: 1 });
    throw e;
  }
  const auth = new AuthService(sql, config);
  const mail = createMailQueue(config.mail, sql, log);
  const recovery = new AccountRecovery({
    sql,
    config,
    throttle: auth.throttle,
    hasher: auth.hasher,
    sessions: auth.sessions,
    mail,
    log,
    clock: options.clock,
  });
  const ops = createOps(config, log, { hashLoad: () => auth.hasher.load, sql });
  const app = createApp({ sql, config, auth, recovery, log, readiness: options.readiness, ops });
  // Idle timeout above the request deadline: a request that waits on purpose gets its answer, not a reset.
  const idleTimeout = Math.min(255, Math.ceil(requestDeadlineMs(config) / 1000) + 2);
  const server = Bun.serve({ hostname: config.host, port: config.port, idleTimeout, fetch: app.fetch });
  let opsServer: ReturnType<typeof startOpsServer> | undefined;
  try {
    if (ops && config.ops?.port !== undefined) opsServer = startOpsServer(ops);
  } catch (e) {
    // What started above stops too: the mail queue's loop alone would keep the process running,
    // with no listener, after the error was printed.
    await server.stop(true);
    await mail?.stop();
    await auth.throttle.stop();
    await sql.end({ timeout: 1 });
    throw e;
  }
  const prune = setInterval(() => {
    auth.throttle.prune().catch(() => {});
    recovery.prune().catch(() => {});
    pruneHistory(sql, config.retention).then(
      (n) => (n.accountEvents || n.mailOutbox || n.backupRuns) && log({ level: "info", msg: "history pruned", ...n }),
      (e: Error) =>
        log({ level: "warn", msg: "history pruning failed; it runs again in 10 minutes", error: e.message }),
    );
  }, 10 * 60_000);
  prune.unref();
  const url = `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${server.port}`;
  log({ level: "info", msg: "listening", url });
  return {
    url,
    port: server.port!,
    recovery,
    opsUrl: opsServer?.url,
    async stop() {
      clearInterval(prune);
      await opsServer?.stop();
      await server.stop(); // waits for in-flight requests; refuses new ones
      await recovery.settled(); // work started after an answer, e.g. issuing a code
      await mail?.stop(); // sends what is due, briefly; never waits out a retry delay
      await auth.throttle.stop(); // attempts an outage cut off: one last try to give them back
      await sql.end({ timeout: 5 });
    },
  };
}
