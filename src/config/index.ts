import * as v from "valibot";
import { ShinkeiError } from "../errors.ts";
import { checkVariableNames } from "../envnames.ts";
import * as server from "./server.ts";
import * as auth from "./auth.ts";
import * as backup from "./backup.ts";
import * as s3 from "./s3.ts";
import * as mail from "./mail.ts";
import * as ops from "./ops.ts";
import * as wal from "./wal.ts";
import * as retention from "./retention.ts";

export type { HashingConfig } from "./auth.ts";
export type { S3Config } from "./s3.ts";
export type { MailConfig } from "./mail.ts";
export type { OpsConfig } from "./ops.ts";
export type { WalConfig } from "./wal.ts";

/**
 * Every variable shinkei reads, with its default, by section (src/config/*.ts): each variable is
 * written once there, as a valibot builder, and what it becomes in Config is read from it in the
 * same file. The README's table is written from these lists; keep the two in step.
 */
const ConfigSchema = v.object({
  ...server.entries,
  ...auth.entries,
  ...backup.entries,
  ...s3.entries,
  ...wal.entries,
  ...mail.entries,
  ...ops.entries,
  ...retention.entries,
});

type Raw = v.InferOutput<typeof ConfigSchema>;

function build(r: Raw, warnings: string[]) {
  const base = server.read(r);
  const backups = backup.read(r);
  return {
    ...base,
    ...auth.read(r),
    ...backups,
    ...s3.read(r, backups.backup.keepDays),
    ...wal.read(r),
    ...mail.read(r, base.environment, base.port),
    ...ops.read(r),
    ...retention.read(r),
    /** Unknown names with our prefixes, for the caller to show (near misses of known names are refused). */
    warnings: warnings as string[] | undefined,
  };
}

export type Config = ReturnType<typeof build>;

export const configVariables = Object.keys(ConfigSchema.entries) as (keyof Raw)[];

/** Variables read outside the schema (cli/output.ts): known, so never reported as typos. */
const otherVariables = ["SHINKEI_DEBUG"];

/** Read the environment once: every problem at once, or the whole Config. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const warnings = checkVariableNames(env, [...configVariables, ...otherVariables]);
  const input: Record<string, string> = {};
  for (const key of configVariables) {
    const value = env[key];
    if (value !== undefined && value !== "") input[key] = value;
  }
  const result = v.safeParse(ConfigSchema, input);
  if (!result.success) {
    // Every bad variable at once (one per name, its first problem): fixing them one run at a time wastes deploys.
    const problems = new Map<string, string>();
    for (const issue of result.issues) {
      const name = issue.path?.map((p) => String(p.key)).join(".") ?? "configuration";
      if (!problems.has(name)) problems.set(name, `${name} ${issue.message}`);
    }
    const names = [...problems.keys()];
    const lines = [...problems.values()];
    throw new ShinkeiError(
      "CONFIG_INVALID",
      lines.length === 1 ? lines[0]! : `${lines.length} settings are invalid:\n  ${lines.join("\n  ")}`,
      {
        hint: `Fix ${names.join(", ")} in the environment or .env (see the README for every variable and its default).`,
        details: { variables: names },
      },
    );
  }
  return build(result.output, warnings);
}
