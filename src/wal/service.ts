import type { Config } from "../config.ts";
import type { Sql } from "../db.ts";
import type { Log } from "../log.ts";
import { startWalStream } from "./stream.ts";

export type WalService = { stop(): Promise<void> };

/** What `backup-service` runs when WAL_ARCHIVE=stream: the WAL stream and its archiver. */
export async function startWalService(deps: { sql: Sql; config: Config; log: Log }): Promise<WalService> {
  const stream = await startWalStream(deps);
  return {
    async stop() {
      await stream.stop();
    },
  };
}
