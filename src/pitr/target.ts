import { ShinkeiError } from "../errors.ts";
import { parseDuration } from "../duration.ts";
import { formatLsn, parseLsn } from "../wal/segments.ts";

/** Where a point-in-time restore stops. */
export type RecoveryTarget =
  | { kind: "time"; at: Date; input: string }
  | { kind: "latest" }
  | { kind: "lsn"; lsn: string }
  | { kind: "name"; name: string };

/** The offset of `zone` from UTC at `at`, in milliseconds (positive east of Greenwich). */
function zoneOffsetMs(zone: string, at: Date): number {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-US", {
      timeZone: zone,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    })
      .formatToParts(at)
      .map((p) => [p.type, p.value]),
  );
  const asUtc = Date.UTC(+parts.year!, +parts.month! - 1, +parts.day!, +parts.hour!, +parts.minute!, +parts.second!);
  return asUtc - Math.floor(at.getTime() / 1000) * 1000;
}

const LOCAL = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?$/;
const ZONED = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)$/i;

/**
 * `--to` as an operator types it at night: an ISO time with its zone, a local time read in
 * BACKUP_TIMEZONE (the zone the app's logs and backup names use), `latest`, or `-5m` (before now).
 */
export function parseTargetTime(input: string, timezone: string, now = new Date()): RecoveryTarget {
  const text = input.trim();
  if (text === "latest") return { kind: "latest" };
  if (text.startsWith("-")) {
    const ms = parseDuration(text.slice(1));
    if (ms === null || !/[a-z]$/.test(text))
      throw new ShinkeiError("USAGE", `"${text}" is not a relative time such as -5m, -90s or -2h`);
    return { kind: "time", at: new Date(now.getTime() - ms), input: text };
  }
  if (ZONED.test(text)) {
    const at = new Date(text.replace(" ", "T"));
    if (!Number.isNaN(at.getTime())) return { kind: "time", at, input: text };
  }
  const m = LOCAL.exec(text);
  if (m) {
    const [, y, mo, d, h, mi, s, frac] = m;
    const wall = Date.UTC(+y!, +mo! - 1, +d!, +h!, +mi!, +(s ?? 0), Math.floor(Number(`0.${frac ?? 0}`) * 1000));
    // The wall-clock time minus the zone's offset at that moment (twice: the offset may change across it).
    let at = wall - zoneOffsetMs(timezone, new Date(wall));
    at = wall - zoneOffsetMs(timezone, new Date(at));
    const date = new Date(at);
    const w = new Date(wall);
    if (
      !Number.isNaN(date.getTime()) &&
      w.getUTCMonth() === +mo! - 1 &&
      w.getUTCDate() === +d! &&
      +h! < 24 &&
      +mi! < 60 &&
      +(s ?? 0) < 60
    )
      return { kind: "time", at: date, input: `${text} ${timezone}` };
  }
  throw new ShinkeiError(
    "USAGE",
    `"${text.slice(0, 64)}" is not a time: give an ISO time with its zone (2026-03-01T17:01:59+01:00), a ` +
      `local time in BACKUP_TIMEZONE ${timezone} (2026-03-01 17:01:59), latest, or -5m`,
  );
}

export function lsnTarget(input: string): RecoveryTarget {
  try {
    return { kind: "lsn", lsn: formatLsn(parseLsn(input)) };
  } catch (e) {
    throw new ShinkeiError("USAGE", (e as Error).message);
  }
}

export function nameTarget(input: string): RecoveryTarget {
  // pg_create_restore_point takes at most 63 bytes (MAXFNAMELEN); quotes would break the setting.
  if (!/^[A-Za-z0-9_.:-]{1,63}$/.test(input))
    throw new ShinkeiError(
      "USAGE",
      `"${input.slice(0, 64)}" is not a restore point name (letters, digits, _ . : -, at most 63)`,
    );
  return { kind: "name", name: input };
}

export function describeTargetOf(t: RecoveryTarget): string {
  switch (t.kind) {
    case "time":
      return `${t.at.toISOString()}${t.input.startsWith("-") ? ` (${t.input})` : ""}`;
    case "latest":
      return "the latest archived WAL";
    case "lsn":
      return `LSN ${t.lsn}`;
    case "name":
      return `restore point "${t.name}"`;
  }
}

/** The recovery_target_* settings for `t` (none for latest: replay all there is). */
export function recoverySettings(t: RecoveryTarget): Record<string, string> {
  switch (t.kind) {
    case "time":
      return { recovery_target_time: t.at.toISOString().replace("T", " ").replace("Z", "+00") };
    case "latest":
      return {};
    case "lsn":
      return { recovery_target_lsn: t.lsn };
    case "name":
      return { recovery_target_name: t.name };
  }
}
