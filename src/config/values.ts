import * as v from "valibot";
import { Cron } from "croner";
import { parseDuration } from "../duration.ts";

/**
 * The builders every variable is made of: each takes its default (and bounds), trims, checks and
 * converts, so a value is described once and read the same way wherever it is set.
 */

/** The parsed values of a section's entries. */
export type Values<E extends v.ObjectEntries> = v.InferOutput<v.ObjectSchema<E, undefined>>;

export const text = (fallback: string) => v.pipe(v.optional(v.string(), fallback), v.trim());

export const optionalText = () =>
  v.pipe(
    v.optional(v.string(), ""),
    v.transform((s) => s.trim() || undefined),
  );

export const int = (fallback: number, min: number, max: number) =>
  v.pipe(
    v.optional(v.string(), String(fallback)),
    v.trim(),
    v.regex(/^\d+$/, "must be a whole number"),
    v.transform(Number),
    v.minValue(min, `must be at least ${min}`),
    v.maxValue(max, `must be at most ${max}`),
  );

export const optionalInt = (min: number, max: number) =>
  v.pipe(
    optionalText(),
    v.check((s) => s === undefined || /^\d+$/.test(s), "must be a whole number"),
    v.transform((s) => (s === undefined ? undefined : Number(s))),
    v.check((n) => n === undefined || n >= min, `must be at least ${min}`),
    v.check((n) => n === undefined || n <= max, `must be at most ${max}`),
  );

export const bool = (fallback: boolean) =>
  v.pipe(
    v.optional(v.string(), String(fallback)),
    v.trim(),
    v.toLowerCase(),
    v.picklist(["true", "false", "1", "0", "yes", "no", "on", "off"], "must be true or false"),
    v.transform((s) => ["true", "1", "yes", "on"].includes(s)),
  );

/**
 * A duration with an upper bound too: a typo such as 30000d must not pass as "forever". With
 * `zero`, 0 turns a feature off.
 */
export const duration = (fallback: string, max: string, options: { zero?: boolean } = {}) =>
  v.pipe(
    v.optional(v.string(), fallback),
    v.transform(parseDuration),
    v.number(
      options.zero
        ? "must be a duration such as 1s or 500ms, or 0 to turn it off"
        : "must be a duration such as 30d, 26h, 15m or 90s",
    ),
    v.minValue(options.zero ? 0 : 1, "must be longer than zero"),
    v.maxValue(parseDuration(max)!, `must be at most ${max}`),
  );

export const cron = (fallback: string, example: string) =>
  v.pipe(
    v.optional(v.string(), fallback),
    v.trim(),
    v.check(
      isCronPattern,
      `must be a cron pattern such as ${example} (minute hour day month weekday), optionally with seconds first`,
    ),
  );

export const timezone = (fallback: string) =>
  v.pipe(
    v.optional(v.string(), fallback),
    v.trim(),
    v.check(isTimezone, "must be an IANA time zone such as UTC or Europe/Berlin"),
  );

/** A URL of one of `protocols`; `database` also requires a host and a database name (postgres URLs). */
function url(protocols: string[], options: { database?: boolean } = {}) {
  return (s: string) => {
    try {
      const u = new URL(s);
      return protocols.includes(u.protocol) && u.hostname !== "" && (!options.database || u.pathname.length > 1);
    } catch {
      return false;
    }
  };
}

/**
 * The driver (postgres.js) sends a query parameter it does not know as a startup parameter, over
 * what it took from the URL: `?database=` and `?user=` would connect elsewhere than the URL's path
 * and user, by which the confirmation, the safety backup (pg_dump), the scratch databases (the same
 * URL with another path) and every message go. A scratch load went into the live database.
 */
const REDIRECTING_PARAMETERS = ["database", "user"];
const noRedirect = (s: string | undefined) => {
  try {
    return s === undefined || !REDIRECTING_PARAMETERS.some((k) => new URL(s).searchParams.has(k));
  } catch {
    return true; // not a URL at all: the check beside this one says so
  }
};
const noRedirectMessage =
  "must name the database in its path and the user before the host, not as ?database= or ?user=";

export const postgresUrl = (fallback: string) =>
  v.pipe(
    v.optional(v.string(), fallback),
    v.trim(),
    v.check(
      url(["postgres:", "postgresql:"], { database: true }),
      "must be a URL such as postgres://user:password@host:5432/database",
    ),
    v.check((s) => noRedirect(s), noRedirectMessage),
  );

/** An optional URL of these protocols, given as `message` when wrong. */
export const optionalUrl = (protocols: string[], message: string) =>
  v.pipe(
    optionalText(),
    v.check((s) => s === undefined || url(protocols)(s), message),
  );

export const optionalPostgresUrl = () =>
  v.pipe(
    optionalText(),
    v.check(
      (s) => s === undefined || url(["postgres:", "postgresql:"])(s),
      "must be a URL such as postgres://user@host:5432/postgres",
    ),
    v.check((s) => noRedirect(s), noRedirectMessage),
  );
export const optionalHttpUrl = () => optionalUrl(["http:", "https:"], "must be an http(s) URL");

function isCronPattern(pattern: string): boolean {
  try {
    new Cron(pattern, { paused: true }).stop();
    return true;
  } catch {
    return false;
  }
}

function isTimezone(zone: string): boolean {
  // The default, valid everywhere: asking ICU loads its time zone data, a large part of every start.
  if (zone === "UTC") return true;
  try {
    new Intl.DateTimeFormat("en", { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}
