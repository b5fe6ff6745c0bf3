import * as v from "valibot";
import { DEFAULT_TRUSTED_PROXIES, parseProxyList } from "./net.ts";
import { bool, duration, int, optionalText, postgresUrl, text, type Values } from "./values.ts";

/** Where the app's database is, and how `serve` listens and keeps sessions. */
export const entries = {
  DATABASE_URL: postgresUrl("postgres://postgres@127.0.0.1:5432/shinkei"),
  SHINKEI_ENV: optionalText(),
  NODE_ENV: optionalText(),
  HOST: text("0.0.0.0"),
  PORT: int(8000, 0, 65535),
  MIGRATE_ON_START: bool(true),
  TRUST_PROXY: bool(false),
  TRUSTED_PROXIES: v.pipe(
    v.optional(v.string(), DEFAULT_TRUSTED_PROXIES),
    v.check(
      (s) => proxyListError(s) === undefined,
      (issue) =>
        `must be IP addresses or CIDR ranges such as 10.0.0.0/8, separated by ` +
        `commas: ${proxyListError(issue.input as string)}`,
    ),
  ),
  SESSION_TTL: duration("30d", "366d"),
  SESSION_CACHE_TTL: duration("1s", "1h", { zero: true }),
  COOKIE_SECURE: bool(true),
  ACCESS_LOG: v.pipe(
    v.optional(v.string(), "all"),
    v.trim(),
    v.toLowerCase(),
    v.picklist(["all", "errors", "off"], "must be all, errors or off"),
  ),
  ACCESS_LOG_PROBES: bool(false),
};

/**
 * Which requests get an access log line: `all`, `errors` (status 400 and up) or `off`. Probes
 * (/health, /ready) come every few seconds from every monitor and say nothing new while they pass:
 * they are logged only when they fail, unless `probes`.
 */
export type AccessLogConfig = { mode: "all" | "errors" | "off"; probes: boolean };

export function read(r: Values<typeof entries>) {
  return {
    databaseUrl: r.DATABASE_URL,
    environment: r.SHINKEI_ENV || r.NODE_ENV || "development",
    host: r.HOST,
    port: r.PORT,
    migrateOnStart: r.MIGRATE_ON_START,
    trustProxy: r.TRUST_PROXY,
    /** The proxies whose X-Forwarded-For entries we believe (only with trustProxy). */
    trustedProxies: parseProxyList(r.TRUSTED_PROXIES),
    sessionTtlMs: r.SESSION_TTL,
    sessionCacheTtlMs: r.SESSION_CACHE_TTL,
    cookieSecure: r.COOKIE_SECURE,
    accessLog: { mode: r.ACCESS_LOG, probes: r.ACCESS_LOG_PROBES } as AccessLogConfig,
  };
}

function proxyListError(list: string): string | undefined {
  try {
    parseProxyList(list);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
