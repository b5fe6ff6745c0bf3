import type { Command, Context } from "./command.ts";
import { untilSignal } from "./signals.ts";
import { ensureDatabase, guarded } from "../src/pg/db.ts";
import { migrateUp } from "../src/guarded/migrate-up.ts";
import { backupServiceParts, startParts } from "../src/service/backup-service.ts";
import { jsonLog } from "../src/log.ts";

export const backupServiceCommand: Command = {
  name: "backup-service",
  description: `A long-running process: takes a backup on BACKUP_SCHEDULE (default "0 2 * * *") in
BACKUP_TIMEZONE (default UTC), copies it to S3 when S3_BUCKET is set, then applies retention
(BACKUP_KEEP_DAYS, default 30). Logs one JSON line per step. Several services on one database
take one backup per scheduled time between them. SIGTERM lets a running backup finish.

With WAL_ARCHIVE=stream it also streams WAL continuously into BACKUP_DIR/wal/ (pg_receivewal
through the slot WAL_SLOT) and takes base backups on BASE_BACKUP_SCHEDULE, for point-in-time
recovery (see shinkei pitr status).`,
  subcommands: [
    {
      default: true,
      summary: "run scheduled backups (BACKUP_SCHEDULE, default daily 02:00 UTC) with retention and off-site copies",
      options: {},
      run: backupService,
    },
  ],
};

async function backupService(ctx: Context): Promise<number> {
  const { config } = ctx;
  await guarded(config.databaseUrl, async () => {
    if (config.migrateOnStart) {
      await ensureDatabase(config.databaseUrl);
      await migrateUp(config.databaseUrl, ctx.db);
    } else await ctx.db`select 1`;
  });
  // Metrics and the status page on METRICS_PORT, when set (server/ops: loaded only then).
  const ops =
    config.ops?.port !== undefined
      ? {
          name: "ops server",
          start: async () => {
            const { createOps, startOpsServer } = await import("../server/ops/app.tsx");
            return startOpsServer(createOps(config, jsonLog, { sql: ctx.db })!);
          },
        }
      : undefined;
  const service = await startParts(backupServiceParts(config, ops), { sql: ctx.db, config, log: jsonLog });
  const signal = await untilSignal();
  jsonLog({ level: "info", msg: "shutting down", signal });
  await service.stop();
  return 0;
}
