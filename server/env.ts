import type { Sql } from "../src/pg/db.ts";
import type { Config } from "../src/config/index.ts";
import type { AuthService } from "../src/auth/service.ts";
import type { ClientInfo } from "../src/auth/throttle.ts";
import type { Session } from "../src/auth/sessions.ts";
import type { AccountRecovery } from "../src/auth/password-reset.ts";
import type { OpsDeps } from "./ops/app.tsx";

import type { Log } from "../src/log.ts";
export { jsonLog, type Log } from "../src/log.ts";

/** What the app is built from: tests hand in their own database and config. */
export type Deps = {
  sql: Sql;
  config: Config;
  auth: AuthService;
  recovery: AccountRecovery;
  log: Log;
  /** Extra readiness facts (the backup scheduler adds the newest backup's age). */
  readiness?: () => Promise<Record<string, unknown>>;
  /** Metrics and the status page, when the configuration turns them on (see server/ops). */
  ops?: OpsDeps;
};

export type AppEnv = {
  Variables: { requestId: string; client: ClientInfo; session: Session; body: unknown };
};
