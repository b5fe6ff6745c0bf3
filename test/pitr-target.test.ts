import { expect, test } from "bun:test";
import { lsnTarget, nameTarget, parseTargetTime, recoverySettings } from "../src/pitr/target.ts";
import { ShinkeiError } from "../src/errors.ts";

const now = new Date("2026-03-01T12:00:00Z");

test("--to: ISO with zone, a local time in BACKUP_TIMEZONE (across DST), latest, relative", () => {
  expect(parseTargetTime("2026-03-01T17:01:59+01:00", "UTC", now)).toMatchObject({
    kind: "time",
    at: new Date("2026-03-01T16:01:59Z"),
  });
  expect(parseTargetTime("2026-03-01T16:01:59.250Z", "Asia/Tokyo", now)).toMatchObject({
    at: new Date("2026-03-01T16:01:59.250Z"),
  });
  // Berlin is UTC+1 in winter, UTC+2 in summer.
  expect(parseTargetTime("2026-01-15 17:01:59", "Europe/Berlin", now)).toMatchObject({
    at: new Date("2026-01-15T16:01:59Z"),
  });
  expect(parseTargetTime("2026-07-15 17:01", "Europe/Berlin", now)).toMatchObject({
    at: new Date("2026-07-15T15:01:00Z"),
  });
  expect(parseTargetTime("2026-07-15 17:01:59.5", "UTC", now)).toMatchObject({
    at: new Date("2026-07-15T17:01:59.500Z"),
  });
  expect(parseTargetTime("latest", "UTC", now)).toEqual({ kind: "latest" });
  expect(parseTargetTime("-5m", "UTC", now)).toMatchObject({ at: new Date("2026-03-01T11:55:00Z") });
  expect(parseTargetTime("-90s", "UTC", now)).toMatchObject({ at: new Date("2026-03-01T11:58:30Z") });
});

test("--to refuses what is not a time, naming the forms it takes", () => {
  for (const bad of [
    "yesterday",
    "-5",
    "2026-13-01 10:00",
    "2026-02-30 10:00",
    "17:01",
    "'; drop table users; --",
    "-5x",
  ]) {
    expect(() => parseTargetTime(bad, "UTC", now)).toThrow(ShinkeiError);
  }
  expect(() => parseTargetTime("soon", "UTC", now)).toThrow(/ISO time with its zone/);
});

test("--to-lsn and --to-name are checked before they reach a setting", () => {
  expect(lsnTarget("0/3000060")).toEqual({ kind: "lsn", lsn: "0/3000060" });
  expect(() => lsnTarget("0/xyz")).toThrow(ShinkeiError);
  expect(nameTarget("drill_20260301")).toEqual({ kind: "name", name: "drill_20260301" });
  expect(() => nameTarget("a'b")).toThrow(ShinkeiError);
  expect(recoverySettings({ kind: "time", at: new Date("2026-03-01T16:01:59.123Z"), input: "" })).toEqual({
    recovery_target_time: "2026-03-01 16:01:59.123+00",
  });
  expect(recoverySettings({ kind: "latest" })).toEqual({});
});
