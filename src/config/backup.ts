import * as v from "valibot";
import { ageConfig } from "./age.ts";
import {
  bool,
  cron,
  duration,
  int,
  optionalHttpUrl,
  optionalPostgresUrl,
  optionalText,
  text,
  timezone,
  type Values,
} from "./values.ts";

/** Where backups go, when they are taken, drilled and pruned, and how they are encrypted and signed. */
export const entries = {
  BACKUP_DIR: text("./backups"),
  /** zstd's levels; its default 3 is about as small as gzip -6 at a fraction of the CPU. */
  BACKUP_COMPRESSION_LEVEL: int(3, 1, 19),
  BACKUP_SCHEDULE: cron("0 2 * * *", "0 2 * * *"),
  BACKUP_TIMEZONE: timezone("UTC"),
  BACKUP_KEEP_DAYS: int(30, 1, 36_500),
  BACKUP_KEEP_DAILY: int(0, 0, 10_000),
  BACKUP_KEEP_WEEKLY: int(0, 0, 10_000),
  BACKUP_KEEP_MONTHLY: int(0, 0, 10_000),
  BACKUP_MAX_AGE: duration("26h", "366d"),
  BACKUP_IN_SERVER: bool(false),
  BACKUP_DRILL_SCHEDULE: cron("0 3 * * 0", "0 3 * * 0"),
  BACKUP_DRILL_MAX_AGE: duration("8d", "366d"),
  DRILL_DATABASE_URL: optionalPostgresUrl(),
  BACKUP_WEBHOOK_URL: optionalHttpUrl(),
  BACKUP_AGE_RECIPIENTS: optionalText(),
  BACKUP_AGE_IDENTITY: optionalText(),
  BACKUP_AGE_PASSPHRASE: optionalText(),
  BACKUP_MANIFEST_KEY: v.pipe(
    optionalText(),
    v.check((s) => s === undefined || s.length >= 32, "must be at least 32 characters (e.g. openssl rand -hex 32)"),
  ),
};

export function read(r: Values<typeof entries>) {
  return {
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
      /** The server drills restore on; the app's own server when unset. */
      drillServerUrl: r.DRILL_DATABASE_URL,
      /** Encryption and signing keys; undefined when none of them is set (see age.ts). */
      age: ageConfig({
        recipients: r.BACKUP_AGE_RECIPIENTS,
        identityFile: r.BACKUP_AGE_IDENTITY,
        passphrase: r.BACKUP_AGE_PASSPHRASE,
        manifestKey: r.BACKUP_MANIFEST_KEY,
      }),
    },
  };
}
