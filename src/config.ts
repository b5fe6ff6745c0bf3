import * as v from "valibot";
import { ShinkeiError } from "./errors.ts";
import { parseDuration } from "./duration.ts";
import { Cron } from "croner";
import { readFileSync } from "node:fs";
import { parseRecipients, type AgeConfig } from "./backup/crypt.ts";

/**
 * Every variable shinkei reads, with its default. The README's table is written from this list;
 * keep the two in step.
 */
const text = (fallback: string) => v.optional(v.string(), fallback);
const optionalText = () => v.pipe(v.optional(v.string(), ""), v.transform((s) => s.trim() || undefined));

const int = (fallback: number, min: number, max: number) =>
  v.pipe(
    v.optional(v.string(), String(fallback)),
    v.trim(),
    v.regex(/^\d+$/, "must be a whole number"),
    v.transform(Number),
    v.minValue(min, `must be at least ${min}`),
    v.maxValue(max, `must be at most ${max}`),
  );

const bool = (fallback: boolean) =>
  v.pipe(
    v.optional(v.string(), String(fallback)),
    v.trim(),
    v.toLowerCase(),
    v.picklist(["true", "false", "1", "0", "yes", "no", "on", "off"], "must be true or false"),
    v.transform((s) => ["true", "1", "yes", "on"].includes(s)),
  );

const duration = (fallback: string) =>
  v.pipe(
    v.optional(v.string(), fallback),
    v.transform(parseDuration),
    v.number("must be a duration such as 30d, 26h, 15m or 90s"),
    v.minValue(1, "must be longer than zero"),
  );

const postgresUrl = (fallback: string) =>
  v.pipe(
    v.optional(v.string(), fallback),
    v.trim(),
    v.check((s) => {
      try {
        const u = new URL(s);
        return (u.protocol === "postgres:" || u.protocol === "postgresql:") && u.hostname !== "" && u.pathname.length > 1;
      } catch {
        return false;
      }
    }, "must be a URL such as postgres://user:password@host:5432/database"),
  );

const ConfigSchema = v.object({
  DATABASE_URL: postgresUrl("postgres://postgres@127.0.0.1:5432/shinkei"),
  SHINKEI_ENV: v.pipe(optionalText(), v.transform((s) => s ?? "")),
  NODE_ENV: v.pipe(optionalText(), v.transform((s) => s ?? "")),
  HOST: text("0.0.0.0"),
  PORT: int(8000, 0, 65535),
  MIGRATE_ON_START: bool(true),
  TRUST_PROXY: bool(false),
  SESSION_TTL: duration("30d"),
  SESSION_CACHE_TTL: v.pipe(
    v.optional(v.string(), "1s"),
    v.transform(parseDuration),
    v.number("must be a duration such as 1s or 500ms, or 0 to turn the cache off"),
  ),
  COOKIE_SECURE: bool(true),
  LOGIN_MAX_FAILURES: int(5, 1, 1000),
  LOGIN_MAX_FAILURES_PER_IP: int(50, 1, 100_000),
  LOGIN_WINDOW: duration("15m"),
  HASH_CONCURRENCY: int(2, 1, 64),
  HASH_QUEUE_LIMIT: int(128, 1, 100_000),
  ARGON2_MEMORY_KIB: int(65536, 1024, 4_194_304),
  ARGON2_TIME_COST: int(2, 1, 20),
  BACKUP_DIR: text("./backups"),
  BACKUP_COMPRESSION_LEVEL: int(6, 1, 9),
  BACKUP_SCHEDULE: v.pipe(
    v.optional(v.string(), "0 2 * * *"),
    v.trim(),
    v.check(isCronPattern, "must be a cron pattern such as 0 2 * * * (minute hour day month weekday), optionally with seconds first"),
  ),
  BACKUP_TIMEZONE: v.pipe(v.optional(v.string(), "UTC"), v.trim(), v.check(isTimezone, "must be an IANA time zone such as UTC or Europe/Berlin")),
  BACKUP_KEEP_DAYS: int(30, 1, 36_500),
  BACKUP_KEEP_DAILY: int(0, 0, 10_000),
  BACKUP_KEEP_WEEKLY: int(0, 0, 10_000),
  BACKUP_KEEP_MONTHLY: int(0, 0, 10_000),
  BACKUP_MAX_AGE: duration("26h"),
  BACKUP_IN_SERVER: bool(false),
  BACKUP_DRILL_SCHEDULE: v.pipe(
    v.optional(v.string(), "0 3 * * 0"),
    v.trim(),
    v.check(isCronPattern, "must be a cron pattern such as 0 3 * * 0 (Sundays at 03:00)"),
  ),
  BACKUP_DRILL_MAX_AGE: duration("8d"),
  DRILL_DATABASE_URL: v.pipe(
    optionalText(),
    v.check((s) => s === undefined || /^postgres(ql)?:\/\/[^/]+/.test(s), "must be a URL such as postgres://user@host:5432/postgres"),
  ),
  BACKUP_WEBHOOK_URL: v.pipe(optionalText(), v.check((s) => s === undefined || /^https?:\/\/.+/.test(s), "must be an http(s) URL")),
  BACKUP_AGE_RECIPIENTS: optionalText(),
  BACKUP_AGE_IDENTITY: optionalText(),
  BACKUP_AGE_PASSPHRASE: optionalText(),
  S3_BUCKET: optionalText(),
  S3_PREFIX: v.pipe(v.optional(v.string(), ""), v.trim(), v.check((s) => !s.startsWith("/"), "must not start with /")),
  S3_ENDPOINT: v.pipe(optionalText(), v.check((s) => s === undefined || /^https?:\/\/.+/.test(s), "must be an http(s) URL")),
  S3_REGION: text("us-east-1"),
  S3_FORCE_PATH_STYLE: bool(false),
  S3_KEEP_DAYS: v.pipe(optionalText(), v.check((s) => s === undefined || /^\d+$/.test(s), "must be a whole number of days")),
  AWS_ACCESS_KEY_ID: optionalText(),
  AWS_SECRET_ACCESS_KEY: optionalText(),
  AWS_SESSION_TOKEN: optionalText(),
  WAL_ARCHIVE: v.pipe(v.optional(v.string(), "off"), v.trim(), v.toLowerCase(), v.picklist(["off", "stream"], "must be off or stream")),
  WAL_SLOT: v.pipe(
    v.optional(v.string(), "shinkei"),
    v.trim(),
    v.regex(/^[a-z0-9_]{1,63}$/, "must be a replication slot name (lower-case letters, digits, _) or none"),
  ),
  WAL_SYNC: bool(true),
  PITR_MAX_LAG: duration("5m"),
  WAL_PARTIAL_UPLOAD_INTERVAL: duration("60s"),
  BASE_BACKUP_START_FAST: bool(false),
  BASE_BACKUP_SCHEDULE: v.pipe(
    v.optional(v.string(), "0 3 * * *"),
    v.trim(),
    v.check(isCronPattern, "must be a cron pattern such as 0 3 * * * (daily at 03:00)"),
  ),
  PITR_DRILL_SCHEDULE: v.pipe(
    v.optional(v.string(), "0 4 * * 0"),
    v.trim(),
    v.check(isCronPattern, "must be a cron pattern such as 0 4 * * 0 (Sundays at 04:00)"),
  ),
});

function isCronPattern(pattern: string): boolean {
  try {
    new Cron(pattern, { paused: true }).stop();
    return true;
  } catch {
    return false;
  }
}

function isTimezone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat("en", { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

type Raw = v.InferOutput<typeof ConfigSchema>;

export type Config = {
  databaseUrl: string;
  environment: string;
  host: string;
  port: number;
  migrateOnStart: boolean;
  trustProxy: boolean;
  sessionTtlMs: number;
  sessionCacheTtlMs: number;
  cookieSecure: boolean;
  login: { maxFailures: number; maxFailuresPerIp: number; windowMs: number };
  hashing: { concurrency: number; queueLimit: number; memoryCost: number; timeCost: number };
  backupDir: string;
  backup: {
    compressionLevel: number;
    schedule: string;
    timezone: string;
    keepDays: number;
    keepDaily: number;
    keepWeekly: number;
    keepMonthly: number;
    maxAgeMs: number;
    inServer: boolean;
    webhookUrl?: string;
    drillSchedule: string;
    drillMaxAgeMs: number;
    /** The server drills restore on; the app's own server when unset. */
    drillServerUrl?: string;
    /** age encryption and decryption keys; undefined when none of the BACKUP_AGE_* variables is set. */
    age?: AgeConfig;
  };
  /** Off-site copies; undefined when S3_BUCKET is not set. */
  s3?: S3Config;
  /** Continuous WAL archive and base backups (point-in-time recovery). */
  wal: WalConfig;
};

export type WalConfig = {
  archive: "off" | "stream";
  /** Physical replication slot; undefined streams without one (WAL_SLOT=none). */
  slot?: string;
  synchronous: boolean;
  maxLagMs: number;
  partialUploadIntervalMs: number;
  baseBackupSchedule: string;
  /** Scheduled base backups ask for an immediate checkpoint instead of a spread one. */
  baseBackupStartFast: boolean;
  /** When the service recovers a scratch instance to a fresh restore point and compares. */
  pitrDrillSchedule: string;
};

export type S3Config = {
  bucket: string;
  prefix: string;
  endpoint?: string;
  region: string;
  forcePathStyle: boolean;
  keepDays: number;
  /** Only when given in the environment; otherwise the AWS SDK's own chain (profiles, roles) applies. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
};

export const configVariables = Object.keys(ConfigSchema.entries) as (keyof Raw)[];

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const input: Record<string, string> = {};
  for (const key of configVariables) {
    const value = env[key];
    if (value !== undefined && value !== "") input[key] = value;
  }
  const result = v.safeParse(ConfigSchema, input);
  if (!result.success) {
    const issue = result.issues[0];
    const name = issue.path?.map((p) => String(p.key)).join(".") ?? "configuration";
    throw new ShinkeiError("CONFIG_INVALID", `${name} ${issue.message}`, {
      hint: `Fix ${name} in the environment or .env (see the README for every variable and its default).`,
    });
  }
  const r = result.output;
  let recipients: string[] = [];
  if (r.BACKUP_AGE_RECIPIENTS) {
    try {
      recipients = parseRecipients(r.BACKUP_AGE_RECIPIENTS, (path) => readFileSync(path, "utf8"));
    } catch (e) {
      throw new ShinkeiError("CONFIG_INVALID", `BACKUP_AGE_RECIPIENTS ${(e as Error).message.replace(/^ENOENT.*/, "is neither age public keys nor a readable file of them")}`, {
        hint: "Give age1... public keys (space or comma separated), or the path of a file with one per line.",
      });
    }
    if (r.BACKUP_AGE_PASSPHRASE) {
      throw new ShinkeiError("CONFIG_INVALID", "BACKUP_AGE_RECIPIENTS and BACKUP_AGE_PASSPHRASE are both set; choose one way to encrypt");
    }
  }
  const age = recipients.length || r.BACKUP_AGE_IDENTITY || r.BACKUP_AGE_PASSPHRASE
    ? { recipients, identityFile: r.BACKUP_AGE_IDENTITY, passphrase: r.BACKUP_AGE_PASSPHRASE }
    : undefined;
  return {
    databaseUrl: r.DATABASE_URL,
    environment: r.SHINKEI_ENV || r.NODE_ENV || "development",
    host: r.HOST,
    port: r.PORT,
    migrateOnStart: r.MIGRATE_ON_START,
    trustProxy: r.TRUST_PROXY,
    sessionTtlMs: r.SESSION_TTL,
    sessionCacheTtlMs: r.SESSION_CACHE_TTL,
    cookieSecure: r.COOKIE_SECURE,
    login: { maxFailures: r.LOGIN_MAX_FAILURES, maxFailuresPerIp: r.LOGIN_MAX_FAILURES_PER_IP, windowMs: r.LOGIN_WINDOW },
    hashing: {
      concurrency: r.HASH_CONCURRENCY,
      queueLimit: r.HASH_QUEUE_LIMIT,
      memoryCost: r.ARGON2_MEMORY_KIB,
      timeCost: r.ARGON2_TIME_COST,
    },
    backupDir: r.BACKUP_DIR,
    backup: {
      compressionLevel: r.BACKUP_COMPRESSION_LEVEL,
      schedule: r.BACKUP_SCHEDULE,
      timezone: r.BACKUP_TIMEZONE,
      keepDays: r.BACKUP_KEEP_DAYS,
      keepDaily: r.BACKUP_KEEP_DAILY,
      keepWeekly: r.BACKUP_KEEP_WEEKLY,
      keepMonthly: r.BACKUP_KEEP_MONTHLY,
      maxAgeMs: r.BACKUP_MAX_AGE,
      inServer: r.BACKUP_IN_SERVER,
      webhookUrl: r.BACKUP_WEBHOOK_URL,
      drillSchedule: r.BACKUP_DRILL_SCHEDULE,
      drillMaxAgeMs: r.BACKUP_DRILL_MAX_AGE,
      drillServerUrl: r.DRILL_DATABASE_URL,
      age,
    },
    s3: r.S3_BUCKET
      ? {
          bucket: r.S3_BUCKET,
          prefix: r.S3_PREFIX,
          endpoint: r.S3_ENDPOINT,
          region: r.S3_REGION,
          forcePathStyle: r.S3_FORCE_PATH_STYLE,
          keepDays: r.S3_KEEP_DAYS ? Number(r.S3_KEEP_DAYS) : r.BACKUP_KEEP_DAYS,
          credentials:
            r.AWS_ACCESS_KEY_ID && r.AWS_SECRET_ACCESS_KEY
              ? { accessKeyId: r.AWS_ACCESS_KEY_ID, secretAccessKey: r.AWS_SECRET_ACCESS_KEY, sessionToken: r.AWS_SESSION_TOKEN }
              : undefined,
        }
      : undefined,
    wal: {
      archive: r.WAL_ARCHIVE as "off" | "stream",
      slot: r.WAL_SLOT === "none" ? undefined : r.WAL_SLOT,
      synchronous: r.WAL_SYNC,
      maxLagMs: r.PITR_MAX_LAG,
      partialUploadIntervalMs: r.WAL_PARTIAL_UPLOAD_INTERVAL,
      baseBackupSchedule: r.BASE_BACKUP_SCHEDULE,
      baseBackupStartFast: r.BASE_BACKUP_START_FAST,
      pitrDrillSchedule: r.PITR_DRILL_SCHEDULE,
    },
  };
}
