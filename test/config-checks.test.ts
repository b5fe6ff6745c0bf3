import { expect, test } from "bun:test";
import { configVariables, loadConfig } from "../src/config/index.ts";
import { shinkei } from "./support/cli.ts";

test("a near miss of a known variable is refused, naming the one meant", () => {
  expect(() => loadConfig({ BACKUP_KEEP_DAY: "90" })).toThrow(
    "BACKUP_KEEP_DAY is not a shinkei variable; did you mean BACKUP_KEEP_DAYS?",
  );
  expect(() => loadConfig({ BAKCUP_DIR: "/srv/backups" })).toThrow("did you mean BACKUP_DIR?");
  expect(() => loadConfig({ backup_age_recipients: "age1x" })).toThrow("did you mean BACKUP_AGE_RECIPIENTS?");
  expect(() => loadConfig({ S3_KEEP_DAY: "7" })).toThrow("did you mean S3_KEEP_DAYS?");
});

test("the edges of a near miss: two edits for a long name, one for a short one, three never", () => {
  // Two edits (a deletion and a swap) from BACKUP_KEEP_DAYS; three edits from anything is someone else's.
  expect(() => loadConfig({ BACKUP_KEEP_DYA: "90" })).toThrow("did you mean BACKUP_KEEP_DAYS?");
  expect(() => loadConfig({ XXBACKUP_KEEP_DAYSX: "90" })).not.toThrow();
  // PGHOST-like short names: one edit is a typo of ours, two are not.
  expect(() => loadConfig({ PORTT: "1" })).toThrow("did you mean PORT?");
  expect(() => loadConfig({ PORTTT: "1" })).not.toThrow();
  // Names of other software, however many, are left alone (and not warned about: not our prefixes).
  const crowd = Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`UNRELATED_VARIABLE_NUMBER_${i}`, "x"]));
  expect(loadConfig(crowd).warnings ?? []).toEqual([]);
});

test("every variable in the schema is guarded against its own typos, new ones included", () => {
  for (const name of configVariables) {
    const typo = name.slice(0, -1);
    expect(() => loadConfig({ [typo]: "1" })).toThrow(`${typo} is not a shinkei variable; did you mean ${name}?`);
  }
});

test("an unknown name with one of our prefixes is a warning naming the closest variable", () => {
  const c = loadConfig({ BACKUP_RETENTION: "90", WAL_COMPRESSION: "on", SHINKEI_COLOUR: "1", LOGIN_LOCKOUT: "1h" });
  expect(c.warnings).toEqual([
    expect.stringMatching(/^BACKUP_RETENTION is not a shinkei variable and is ignored \(the closest is BACKUP_\w+\)$/),
    "LOGIN_LOCKOUT is not a shinkei variable and is ignored (the closest is LOGIN_WINDOW)",
    expect.stringMatching(/^SHINKEI_COLOUR is not a shinkei variable and is ignored \(the closest is \w+\)$/),
    expect.stringMatching(/^WAL_COMPRESSION is not a shinkei variable and is ignored/),
  ]);
});

test("other software's variables and the ones read outside the schema are left alone", () => {
  const env = {
    HOME: "/root",
    HOSTNAME: "box",
    PATH: "/usr/bin",
    USER: "me",
    TERM: "xterm",
    PWD: "/",
    SHLVL: "1",
    LANG: "C",
    PGHOST: "db",
    PGPORT: "5432",
    PGUSER: "app",
    PGPASSWORD: "x",
    AWS_REGION: "eu-west-1",
    AWS_PROFILE: "ops",
    NODE_OPTIONS: "--max-old-space-size=512",
    DATABASE_POOL: "10",
    TEST_DATABASE_URL: "postgres://h/d",
    POSTGRES_PASSWORD: "x",
    PG_MAJOR: "17",
    CI: "1",
    NO_COLOR: "1",
    SHINKEI_DEBUG: "1",
  };
  expect(loadConfig(env).warnings).toEqual([]);
});

test("the binary: a typo stops the command with exit 2, a lookalike warns on stderr", async () => {
  const typo = await shinkei(["status"], { BACKUP_KEEP_DAY: "90" });
  expect(typo.code).toBe(2);
  expect(typo.stderr.split("\n")[0]).toBe(
    "✖ BACKUP_KEEP_DAY is not a shinkei variable; did you mean BACKUP_KEEP_DAYS?",
  );
  // Nothing listens on port 1: the command fails after reading the configuration, which is enough here.
  const lookalike = await shinkei(["status"], {
    BACKUP_RETENTION: "90",
    DATABASE_URL: "postgres://postgres@127.0.0.1:1/shinkei",
  });
  expect(lookalike.stderr.split("\n")[0]).toMatch(/^▲ BACKUP_RETENTION is not a shinkei variable and is ignored/);
});

test("S3_KEEP_DAYS has bounds: 0, negative, fractional and huge values are refused", () => {
  for (const bad of ["0", "-1", "1.5", "36501"])
    expect(() => loadConfig({ S3_KEEP_DAYS: bad })).toThrow(/^S3_KEEP_DAYS must be/);
  expect(loadConfig({ S3_BUCKET: "b", S3_KEEP_DAYS: "7" }).s3!.keepDays).toBe(7);
  expect(loadConfig({ S3_BUCKET: "b", BACKUP_KEEP_DAYS: "9" }).s3!.keepDays).toBe(9);
});

test("RECOVER_RECORD_KEEP: 90 days unless set, 0 keeps records for good, bounded, its near misses refused", () => {
  expect(loadConfig({}).retention.recoverRecordsMs).toBe(90 * 86_400_000);
  expect(loadConfig({ RECOVER_RECORD_KEEP: "30d" }).retention.recoverRecordsMs).toBe(30 * 86_400_000);
  expect(loadConfig({ RECOVER_RECORD_KEEP: "0" }).retention.recoverRecordsMs).toBe(0);
  expect(() => loadConfig({ RECOVER_RECORD_KEEP: "30000d" })).toThrow("RECOVER_RECORD_KEEP must be at most 3650d");
  expect(() => loadConfig({ RECOVER_RECORD_KEEP: "soon" })).toThrow("RECOVER_RECORD_KEEP must be a duration");
  for (const typo of ["RECOVER_RECORDS_KEEP", "RECOVERY_RECORD_KEEP", "recover_record_keep"])
    expect(() => loadConfig({ [typo]: "30d" })).toThrow(
      `${typo} is not a shinkei variable; did you mean RECOVER_RECORD_KEEP?`,
    );
  // Its prefix is ours now: an unknown RECOVER_ name is a warning, not silently ignored.
  expect(loadConfig({ RECOVER_RECORD_AGE: "30d" }).warnings).toEqual([
    expect.stringMatching(/^RECOVER_RECORD_AGE is not a shinkei variable and is ignored/),
  ]);
});

test("every numeric setting has an upper bound: a runaway number is refused for all but free text", () => {
  // Names, paths, keys and labels: any text is theirs to hold.
  const freeText = [
    "SHINKEI_ENV",
    "NODE_ENV",
    "HOST",
    "BACKUP_DIR",
    "BACKUP_AGE_IDENTITY",
    "BACKUP_AGE_PASSPHRASE",
    "S3_BUCKET",
    "S3_PREFIX",
    "S3_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "METRICS_HOST",
    "METRICS_TOKEN",
    "OPS_TOKEN",
    "WAL_SLOT",
  ];
  for (const name of configVariables) {
    if (freeText.includes(name)) continue;
    expect(() => loadConfig({ [name]: "99999999999999999999" }), name).toThrow(new RegExp(`^${name} `));
  }
  for (const [name, value, message] of [
    ["SESSION_TTL", "400d", "at most 366d"],
    ["SESSION_CACHE_TTL", "2h", "at most 1h"],
    ["LOGIN_WINDOW", "8d", "at most 7d"],
    ["BACKUP_MAX_AGE", "367d", "at most 366d"],
    ["BACKUP_DRILL_MAX_AGE", "367d", "at most 366d"],
  ] as const) {
    expect(() => loadConfig({ [name]: value })).toThrow(`${name} must be ${message}`);
  }
});

test("every invalid variable is reported at once, one line each, and the hint names them all", () => {
  let error: { message: string; hint?: string; exitCode?: number } | undefined;
  try {
    loadConfig({ PORT: "abc", BACKUP_KEEP_DAYS: "0", S3_KEEP_DAYS: "0", SESSION_TTL: "forever" });
  } catch (e) {
    error = e as typeof error;
  }
  expect(error?.exitCode).toBe(2);
  expect(error?.message.split("\n")).toEqual([
    "4 settings are invalid:",
    "  PORT must be a whole number",
    expect.stringMatching(/^  SESSION_TTL must be a duration/),
    "  BACKUP_KEEP_DAYS must be at least 1",
    "  S3_KEEP_DAYS must be at least 1",
  ]);
  expect(error?.hint).toContain("Fix PORT, SESSION_TTL, BACKUP_KEEP_DAYS, S3_KEEP_DAYS");
  // One bad variable keeps its one-line message.
  expect(() => loadConfig({ PORT: "abc" })).toThrow(/^PORT must be a whole number$/);
});
