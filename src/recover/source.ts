import { basename } from "node:path";
import { connect, describeTarget } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { migrate } from "../migrations/migrate.ts";
import { currentSchemaVersion } from "../pg/schema.ts";
import { obtainBackup } from "../backup/catalog.ts";
import { content } from "../backup/decode.ts";
import { load, refuseUntrusted, type Allowances } from "../backup/restore.ts";
import { withScratchDatabase } from "../backup/scratch.ts";
import { assertVerified, verifyBackup } from "../backup/verify.ts";
import type { AgeConfig } from "../storage/crypt.ts";
import type { BackupStore } from "../storage/store.ts";
import type { Config } from "../config/index.ts";
import { parseTargetTime } from "../pitr/target.ts";
import { recoverTo } from "../pitr/recover.ts";
import { walStore } from "../wal/offsite.ts";

/** Scratch databases of recover: a prefix of their own, so a drill and a recovery never drop each other's. */
export const RECOVER_PREFIX = "shinkei_recover_";

export type SourceStep = {
  step: "resolve" | "verify" | "load" | "migrate" | "recover";
  bytes?: number;
  file?: string;
  message?: string;
};

export type Source = {
  path: string;
  file: string;
  /** The scratch database holding the backup's data, on the live server, as the role that may read it. */
  url: string;
  /** The schema version the backup was taken at (the scratch database is migrated to the live one). */
  schemaVersion: number;
  loadMs: number;
};

export type SourceOptions = {
  /** A file (path or a name in `dir`), or `latest` / undefined for the newest backup. */
  from?: string;
  dir: string;
  offsite?: BackupStore;
  /** The live database: the scratch database is made on its server. */
  databaseUrl: string;
  age?: AgeConfig;
  env?: Record<string, string | undefined>;
  onStep?: (s: SourceStep) => void;
  onScratch?: (drop: () => Promise<void>) => void;
  /** What to let through that this host would refuse: a plain file, one without a manifest. */
  allow?: Allowances;
  /** Queue behind another recover on the same server (--wait) instead of failing with LOCKED. */
  wait?: boolean;
};

/**
 * Load a backup (anything `backup restore` accepts: local or off-site, encrypted or not) into a
 * scratch database on the live server, run `fn` against it, and drop it whatever happens.
 */
export async function withRecoverySource<T>(options: SourceOptions, fn: (source: Source) => Promise<T>): Promise<T> {
  options.onStep?.({ step: "resolve" });
  const from = options.from === "latest" ? undefined : options.from;
  const target = describeTarget(options.databaseUrl);
  const path = await obtainBackup(options.dir, from, options.offsite, target, options.age?.manifestKey).catch((e) => {
    // The same search as `backup restore`, but here a file is named with --from.
    if (e instanceof ShinkeiError && e.code === "BACKUP_NOT_FOUND" && !from)
      throw new ShinkeiError(e.code, e.message, {
        hint: "Take backups with shinkei backup (or backup-service), or name a file with --from.",
      });
    throw e;
  });
  options.onStep?.({ step: "verify", file: basename(path) });
  const verification = await verifyBackup(path, { quick: true, env: options.env, age: options.age });
  assertVerified(verification);
  refuseUntrusted(verification, options.age, options.allow);
  // Opened (decrypted) before the scratch database exists: a missing key stops here, having made nothing.
  const raw = await content(path, verification.format, options.age, verification.manifest?.encryption);
  const live = connect(options.databaseUrl, { max: 1 });
  const liveVersion = await currentSchemaVersion(live).finally(() => live.end({ timeout: 5 }));

  return withScratchDatabase(
    {
      serverUrl: options.databaseUrl,
      prefix: RECOVER_PREFIX,
      what: "recover",
      wait: options.wait ?? false,
      onScratch: options.onScratch,
      privilegeHint:
        "Grant it (ALTER ROLE ... CREATEDB): recover loads the backup into a scratch database beside the live one.",
    },
    // `url` logs in as the scratch's own role (see scratch.ts): the load, the migration (which fires
    // the file's triggers and defaults) and every read of its rows run as that role.
    async (url) => {
      const started = performance.now();
      let bytes = 0;
      const counted = raw.pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, out) {
            bytes += chunk.length;
            options.onStep?.({ step: "load", bytes });
            out.enqueue(chunk);
          },
        }),
      );
      options.onStep?.({ step: "load", bytes: 0 });
      await load(url, counted, verification.format, { env: options.env });
      const schemaVersion = await toLiveSchema(url, liveVersion, verification.file, options.onStep);
      return fn({ path, file: verification.file, url, schemaVersion, loadMs: Math.round(performance.now() - started) });
    },
  );
}

/**
 * The source's schema version; an older one is brought to the live schema in the scratch copy, so
 * rows compare column by column. A newer one is refused.
 */
async function toLiveSchema(
  url: string,
  liveVersion: number,
  file: string,
  onStep?: (s: SourceStep) => void,
): Promise<number> {
  const sql = connect(url, { max: 2 });
  try {
    const schemaVersion = await currentSchemaVersion(sql);
    if (schemaVersion > liveVersion) {
      throw new ShinkeiError(
        "SCHEMA_TOO_NEW",
        `${file} is at schema version ${schemaVersion}, newer than the live database (${liveVersion})`,
        {
          hint: "Run shinkei migrate on the live database first, or pick an older moment.",
        },
      );
    }
    if (schemaVersion < liveVersion) {
      onStep?.({ step: "migrate" });
      await migrate(sql);
    }
    return schemaVersion;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * The state at a moment as the source (`--at`): a scratch instance recovered from the WAL archive
 * to `at` (the machinery of `pitr restore`), run `fn` against it, and remove it whatever happens.
 */
export async function withPointInTimeSource<T>(
  options: {
    config: Config;
    at: string;
    onStep?: (s: SourceStep) => void;
    onScratch?: (drop: () => Promise<void>) => void;
    signal?: AbortSignal;
  },
  fn: (source: Source) => Promise<T>,
): Promise<T> {
  const { config } = options;
  const target = parseTargetTime(options.at, config.backup.timezone);
  const live = connect(config.databaseUrl, { max: 1 });
  const liveVersion = await currentSchemaVersion(live).finally(() => live.end({ timeout: 5 }));
  const recovery = await recoverTo({
    config,
    target,
    store: walStore(config),
    keep: false,
    signal: options.signal,
    onStep: (message) => options.onStep?.({ step: "recover", message }),
  });
  options.onScratch?.(() => recovery.stop());
  try {
    const file = `${recovery.base} + WAL to ${recovery.reached.commitTime ?? recovery.target}`;
    const schemaVersion = await toLiveSchema(recovery.url!, liveVersion, file, options.onStep);
    return await fn({ path: recovery.base, file, url: recovery.url!, schemaVersion, loadMs: recovery.durationMs });
  } finally {
    await recovery.stop();
  }
}
