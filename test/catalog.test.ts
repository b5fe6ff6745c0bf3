import { expect, test } from "bun:test";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { obtainBackup } from "../src/backup/catalog.ts";
import { checkFreshness, newestGood } from "../src/backup/freshness.ts";
import { pruneStore } from "../src/backup/prune.ts";
import { LocalStore } from "../src/storage/local.ts";
import { backupName } from "../src/storage/naming.ts";
import { tempDir } from "./support/fixtures.ts";

/*
 * What `backup restore` and `recover --from latest` pick when no file is named, with a second
 * folder standing in for the off-site store (the store contract suite runs the same tests against
 * S3: what obtainBackup does with a store is the interface's, not the backend's).
 */

const hour = 3600_000;

/** A backup file and its manifest in `dir`, taken `hoursAgo` hours ago, of `database`, for `reason`. */
async function plant(dir: string, hoursAgo: number, database: unknown, reason = "manual", content = "local") {
  const name = backupName(new Date(Date.now() - hoursAgo * hour));
  await writeFile(join(dir, name), content);
  await writeFile(join(dir, `${name}.manifest.json`), JSON.stringify({ file: name, reason, database }));
  return name;
}

test("the newest backup of the database named, not a newer one of another database", async () => {
  const dir = await tempDir("catalog");
  const a = await plant(dir, 2, "a");
  const b = await plant(dir, 1, "b");
  expect(await obtainBackup(dir, undefined, undefined, "a")).toBe(join(dir, a));
  // Without a database, the newest of any.
  expect(await obtainBackup(dir)).toBe(join(dir, b));
});

test("only another database's backups: refused, naming both as quoted text", async () => {
  const dir = await tempDir("catalog");
  await plant(dir, 1, "b\n\u001b[31mred");
  const e = await obtainBackup(dir, undefined, undefined, "a").catch((x) => x);
  expect(e.code).toBe("BACKUP_NOT_FOUND");
  expect(e.message).toBe(`no backups of "a" in ${dir} (the newest is of "b\\n\\u001b[31mred")`);
  expect(e.hint).toContain("--backup-file");
  // A manifest whose database is not text prints as text.
  const odd = await tempDir("catalog");
  await plant(odd, 1, { name: "b" });
  expect((await obtainBackup(odd, undefined, undefined, "a").catch((x) => x)).message).toContain(
    '(the newest is of "[object Object]")',
  );
});

test("off-site: the newest copy of this database is downloaded, not the newer one of another", async () => {
  const dir = await tempDir("catalog");
  const bucket = await tempDir("catalog-bucket");
  const mine = await plant(bucket, 2, "a", "manual", "remote a");
  await plant(bucket, 1, "b", "manual", "remote b");
  const path = await obtainBackup(dir, undefined, new LocalStore(bucket), "a");
  expect(path).toBe(join(dir, mine));
  expect(await readFile(path, "utf8")).toBe("remote a");
  // Only what was picked came down: b's file and manifest stayed in the bucket.
  expect((await readdir(dir)).sort()).toEqual([mine, `${mine}.manifest.json`]);
});

test("off-site: a file already here is never downloaded over, and a safety copy is never picked", async () => {
  const dir = await tempDir("catalog");
  const bucket = await tempDir("catalog-bucket");
  const a = await plant(dir, 3, "a");
  const b = await plant(dir, 2, "b", "manual", "local b");
  // The bucket's copy of b differs (tampered, or another of the same name): it must not replace ours.
  await writeFile(join(bucket, b), "tampered b");
  await writeFile(join(bucket, `${b}.manifest.json`), JSON.stringify({ file: b, reason: "manual", database: "a" }));
  await plant(bucket, 1, "a", "pre-restore", "safety copy of a");
  expect(await obtainBackup(dir, undefined, new LocalStore(bucket), "a")).toBe(join(dir, a));
  expect(await readFile(join(dir, b), "utf8")).toBe("local b");
  expect((await readdir(dir)).length).toBe(4);
});

test("freshness is judged per database: another's fresh backups do not stand in for this one's", async () => {
  const dir = await tempDir("catalog");
  const old = await plant(dir, 30, "a");
  await plant(dir, 1, "b");
  // sizeBytes as the manifest says, so both count as good.
  for (const name of await readdir(dir))
    if (name.endsWith(".manifest.json")) {
      const m = JSON.parse(await readFile(join(dir, name), "utf8"));
      await writeFile(join(dir, name), JSON.stringify({ ...m, sizeBytes: "local".length }));
    }
  expect((await newestGood(dir, "a")).newest?.name).toBe(old);
  expect((await newestGood(dir, "c")).newest).toBeNull();
  const stale = await checkFreshness(dir, 2 * hour, 24 * hour, undefined, "a").catch((e) => e);
  expect(stale.code).toBe("BACKUP_STALE");
  expect(stale.message).toContain(`the newest good backup (${old}) is 1d 6h old`);
  const none = await checkFreshness(dir, 2 * hour, 24 * hour, undefined, "c").catch((e) => e);
  expect(none.message).toBe(`no good backup of "c" in ${dir}`);
});

test("off-site retention keeps each database's own newest and daily backups, by their manifests", async () => {
  const dir = await tempDir("catalog");
  const day = 24 * hour;
  const ours: string[] = [];
  for (const d of [30, 20, 12]) ours.push(await plant(dir, (d * day) / hour, "a"));
  const theirs: string[] = [];
  for (const d of [29.9, 19.9, 11.9, 5]) theirs.push(await plant(dir, (d * day) / hour, "b\n\u001b[31m"));
  const policy = { keepDays: 30, keepDaily: 2, keepWeekly: 0, keepMonthly: 0 };
  const r = await pruneStore(new LocalStore(dir), 3, policy, true);
  const kept = (name: string) => r.decisions.find((d) => d.name === name)!.keep;
  // Counted together, the other database's later backups took both daily places.
  expect([ours.map(kept), theirs.map(kept)]).toEqual([
    [false, true, true],
    [false, false, true, true],
  ]);
  expect(r.decisions.find((d) => d.name === ours[2])!.why).toContain('(of "a")');
  // A name from a manifest prints as one line of plain text.
  expect(r.decisions.find((d) => d.name === theirs[3])!.why).toEndWith(' (of "b\\n\\u001b[31m")');
  expect(r.removed).toEqual([]);
  expect((await readdir(dir)).length).toBe(14);
});
