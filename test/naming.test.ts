import { expect, test } from "bun:test";
import {
  ENCRYPTED_EXTENSION,
  MANIFEST_SUFFIX,
  backupName,
  compareNewestFirst,
  isOurObject,
  parseBackupName,
} from "../src/storage/naming.ts";

// Retention and listing delete or pick only what parses here: these are the rules that keep
// everything else in a folder or bucket safe.

const at = new Date(Date.UTC(2026, 0, 2, 3, 4, 5));

test("backupName writes the UTC time, an optional sequence and the extension", () => {
  expect(backupName(at)).toBe("shinkei_backup_20260102_030405.sql.zst");
  expect(backupName(at, 7)).toBe("shinkei_backup_20260102_030405_7.sql.zst");
  expect(backupName(at, 0, ENCRYPTED_EXTENSION)).toBe("shinkei_backup_20260102_030405.sql.zst.age");
  // The moment, not the zone it was written in.
  expect(backupName(new Date("2026-06-30T23:59:59-05:00"))).toBe("shinkei_backup_20260701_045959.sql.zst");
});

test("parseBackupName reads back every name backupName writes", () => {
  for (const extension of ["sql", "sql.gz", "sql.zst", "dump", "dump.gz", "sql.gz.age", "sql.zst.age"]) {
    for (const sequence of [0, 1, 999]) {
      const name = backupName(at, sequence, extension);
      expect(parseBackupName(name)).toEqual({ name, takenAt: at, extension, sequence });
    }
  }
});

test.each([
  ["another extension", "shinkei_backup_20260102_030405.tar"],
  ["a suffix after ours", "shinkei_backup_20260102_030405.sql.gz.bak"],
  ["a prefix before ours", "old_shinkei_backup_20260102_030405.sql"],
  ["a folder in front", "nested/shinkei_backup_20260102_030405.sql"],
  ["a manifest (not a backup)", `shinkei_backup_20260102_030405.sql.gz${MANIFEST_SUFFIX}`],
  ["a short date", "shinkei_backup_2026012_030405.sql"],
  ["a four-digit sequence", "shinkei_backup_20260102_030405_1000.sql"],
  ["a hand-made name", "shinkei_backup_old_manual.sql.gz"],
  ["30 February", "shinkei_backup_20260230_000000.sql"],
  ["month 00", "shinkei_backup_20260002_000000.sql"],
  ["month 13", "shinkei_backup_20261301_000000.sql"],
  ["day 00", "shinkei_backup_20260100_000000.sql"],
  ["hour 24", "shinkei_backup_20260102_240000.sql"],
  ["minute 60", "shinkei_backup_20260102_036000.sql"],
  ["second 99", "shinkei_backup_20260102_030499.sql"],
  ["year 0099", "shinkei_backup_00990102_030405.sql"],
  ["nothing", ""],
])("not ours: %s", (_why, name) => {
  expect(parseBackupName(name)).toBeNull();
  expect(isOurObject(name)).toBe(name.endsWith(MANIFEST_SUFFIX));
});

test("isOurObject: our backups and their manifests, nothing else", () => {
  const name = backupName(at);
  expect(isOurObject(name)).toBe(true);
  expect(isOurObject(name + MANIFEST_SUFFIX)).toBe(true);
  expect(isOurObject(`notes.txt${MANIFEST_SUFFIX}`)).toBe(false);
  expect(isOurObject(MANIFEST_SUFFIX)).toBe(false);
  expect(isOurObject(`${name}${MANIFEST_SUFFIX}${MANIFEST_SUFFIX}`)).toBe(false);
});

test("compareNewestFirst: the later time first; within one second, the higher sequence", () => {
  const names = [
    backupName(at, 1),
    backupName(new Date(at.getTime() - 1000)),
    backupName(at),
    backupName(new Date(at.getTime() + 1000)),
    backupName(at, 2),
  ];
  const sorted = names
    .map((n) => parseBackupName(n)!)
    .sort(compareNewestFirst)
    .map((b) => b.name);
  expect(sorted).toEqual([
    "shinkei_backup_20260102_030406.sql.zst",
    "shinkei_backup_20260102_030405_2.sql.zst",
    "shinkei_backup_20260102_030405_1.sql.zst",
    "shinkei_backup_20260102_030405.sql.zst",
    "shinkei_backup_20260102_030404.sql.zst",
  ]);
});
