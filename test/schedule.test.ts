import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { copyFile, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import type { TestDatabase } from "./support/db.ts";
import { shinkei, takeBackup } from "./support/cli.ts";
import { backupFolder, seededDatabase } from "./support/backup.ts";
import { Service } from "./support/process.ts";
import { until } from "./support/wait.ts";
import { tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";
import { loadConfig } from "../src/config/index.ts";
import { scheduledRun } from "../src/service/schedule.ts";
import { scheduledDrill, startPitrDrills } from "../src/service/drills.ts";
import { connect } from "../src/pg/db.ts";
import { backupName } from "../src/storage/naming.ts";

let db: TestDatabase;
let dir: string;
let env: Record<string, string>;
const DAY = 86_400_000;
const backupFiles = async () => (await readdir(dir)).filter((n) => /^shinkei_backup_.*\.sql\.zst$/.test(n)).sort();

beforeAll(async () => {
  db = await seededDatabase("schedule", "sch");
});
beforeEach(async () => {
  ({ dir, env } = await backupFolder(db, "schedule"));
});
afterAll(() => db.drop());

/**
 * One real backup of the file's database, kept outside every test's folder: the copies below need
 * a real one, not a fresh one each time (a backup costs the binary and pg_dump, up to a second here).
 */
let template: Promise<string> | undefined;
function realBackup(): Promise<string> {
  template ??= (async () => {
    const path = await takeBackup(env);
    const kept = join(await tempDir("schedule-template"), basename(path));
    await rename(path, kept);
    await rename(`${path}.manifest.json`, `${kept}.manifest.json`);
    return kept;
  })();
  return template;
}

/** Copies of one real backup under names from `daysAgo`, with manifests: "backups taken in the past". */
/** Backups dated `daysAgo` in `dir`, copies of one real one; `database`: the one their manifests name. */
async function pastBackups(daysAgo: number[], offsite?: string, database?: string): Promise<string[]> {
  const path = await realBackup();
  const manifest = JSON.parse(await readFile(`${path}.manifest.json`, "utf8"));
  const names = [];
  for (const d of daysAgo) {
    const name = backupName(new Date(Date.now() - d * DAY));
    await copyFile(path, join(dir, name));
    const m = {
      ...manifest,
      file: name,
      ...(database ? { database } : {}),
      offsite: offsite ? { s3: { location: offsite, sizeBytes: 1, verified: "size", copiedAt: "" } } : undefined,
    };
    await writeFile(join(dir, `${name}.manifest.json`), JSON.stringify(m));
    names.push(name);
  }
  return names;
}

describe("the schedule", () => {
  test("two backup services on one database: one backup per tick, on time, with the log lines to read", async () => {
    const scheduleEnv = { ...env, BACKUP_SCHEDULE: "*/2 * * * * *" };
    const since = new Date(Math.floor(Date.now() / 1000) * 1000); // runs other tests recorded are older
    const a = await Service.start(["backup-service"], scheduleEnv);
    const b = await Service.start(["backup-service"], scheduleEnv);
    try {
      const first = await a.waitFor((l) => l.msg === "backup schedule");
      expect(first).toMatchObject({ schedule: "*/2 * * * * *", timezone: "UTC", offsite: "none" });
      expect(new Date(first.next as string).getTime()).toBeGreaterThan(Date.now() - 2000);
      await a.waitFor((l) => l.msg === "no good backup yet");
      // Wait for three ticks' worth of finished runs between the two services, and two slots the other
      // one found taken: on a busy machine a service can miss a tick (started late, or still busy with
      // the last backup), and three finished runs then came with a single skip (seen under load).
      const count = (msg: string) => [...a.lines, ...b.lines].filter((l) => l.msg === msg).length;
      await until(
        "three finished backups and two slots found taken",
        async () => count("backup finished") >= 3 && count("backup skipped: another process took this run") >= 2,
        45_000,
      );
    } finally {
      expect(await a.stop()).toBe(0);
      expect(await b.stop()).toBe(0);
    }
    const all = [...a.lines, ...b.lines];
    const started = all.filter((l) => l.msg === "backup started").map((l) => l.scheduledFor as string);
    const skipped = all
      .filter((l) => l.msg === "backup skipped: another process took this run")
      .map((l) => l.scheduledFor as string);
    expect(new Set(started).size).toBe(started.length); // no slot taken twice
    expect(started.length).toBeGreaterThanOrEqual(3);
    for (const slot of started) expect(new Date(slot).getUTCSeconds() % 2).toBe(0);
    expect(skipped.length).toBeGreaterThanOrEqual(2); // the other service saw the slots taken
    const files = await backupFiles();
    expect(files.length).toBe(all.filter((l) => l.msg === "backup finished").length);
    const runs = await db.sql`select scheduled_for, file from backup_runs where file is not null
        and scheduled_for between ${since} and now() order by scheduled_for`;
    expect(runs.map((r) => r.file).sort()).toEqual(files);
    const done = all.find((l) => l.msg === "backup finished")!;
    expect(Object.keys(done)).toEqual(expect.arrayContaining(["file", "sizeBytes", "durationMs"]));
    expect(all.some((l) => l.msg === "off-site copy" && l.offsite === "not configured")).toBe(true);
    expect(all.some((l) => l.msg === "next backup")).toBe(true);
  });

  test("serve with BACKUP_IN_SERVER=true runs the schedule; /ready shows the newest backup's age only", async () => {
    const s = await Service.start(["serve"], {
      ...env,
      BACKUP_IN_SERVER: "true",
      BACKUP_SCHEDULE: "* * * * * *",
      PORT: "0",
      HOST: "127.0.0.1",
    });
    try {
      const url = await s.listening();
      await s.waitFor((l) => l.msg === "backup finished");
      const ready = await (await fetch(`${url}/ready`)).json();
      expect(ready.backup.ageSeconds).toBeLessThan(60);
      // Anonymous: the age, never the backup's name.
      expect(Object.keys(ready.backup)).toEqual(["ageSeconds"]);
      expect(JSON.stringify(ready)).not.toContain("shinkei_backup_");
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });

  test("a missed run is reported on start", async () => {
    await pastBackups([3]);
    const s = await Service.start(["backup-service"], { ...env, BACKUP_SCHEDULE: "0 2 * * *" });
    try {
      const missed = await s.waitFor((l) => l.msg === "missed backup");
      expect(new Date(missed.newestAt as string).getTime()).toBeLessThan(Date.now() - 2 * DAY);
    } finally {
      await s.stop();
    }
  });

  test("a claim planted for a future slot does not stop that slot's backup; a warning names the row", async () => {
    const slot = new Date(Date.UTC(2032, 0, 1, 2, 0, 0));
    // What anyone with the app's role could write today to silence that slot on every service.
    await db.sql`insert into backup_runs (scheduled_for, host) values (${slot}, 'planter:1')`;
    const [planted] = await db.sql`select started_at from backup_runs where scheduled_for = ${slot}`;
    const lines: Record<string, unknown>[] = [];
    await scheduledRun({ sql: db.sql, config: loadConfig(env), log: (l) => void lines.push(l) }, slot);
    expect(lines.find((l) => l.level === "warn")).toMatchObject({
      msg: expect.stringContaining("backup: the slot's claim in backup_runs was not written at the slot"),
      scheduledFor: slot.toISOString(),
      claimHost: "planter:1",
      claimStartedAt: planted!.started_at.toISOString(),
    });
    expect(lines.some((l) => l.msg === "backup skipped: another process took this run")).toBe(false);
    const done = lines.find((l) => l.msg === "backup finished")!;
    expect(await backupFiles()).toEqual([basename(done.file as string)]);
    const [run] = await db.sql`select host, file, error from backup_runs where scheduled_for = ${slot}`;
    expect(run).toMatchObject({ file: basename(done.file as string), error: null });
    expect(run!.host).not.toBe("planter:1");
  });

  test("failures and successes reach the webhook without holding up the backup", async () => {
    const events: Record<string, unknown>[] = [];
    const hook = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch: async (r) => (events.push((await r.json()) as Record<string, unknown>), new Response("ok")),
    });
    try {
      const config = loadConfig({ ...env, BACKUP_WEBHOOK_URL: `http://127.0.0.1:${hook.port}/hook` });
      await scheduledRun({ sql: db.sql, config, log: () => {} }, new Date(Date.UTC(2031, 0, 1, 2, 0, 0)));
      const blocked = join(dir, "a-file");
      await writeFile(blocked, "");
      const broken = loadConfig({
        ...env,
        BACKUP_DIR: join(blocked, "sub"),
        BACKUP_WEBHOOK_URL: `http://127.0.0.1:${hook.port}/hook`,
      });
      await scheduledRun({ sql: db.sql, config: broken, log: () => {} }, new Date(Date.UTC(2031, 0, 1, 2, 0, 1)));
      for (let i = 0; i < 100 && events.length < 3; i++) await Bun.sleep(20);
      // The first backup of a deployment is drilled at once, so `backup check` can pass from day one.
      expect(events.map((e) => e.event).sort()).toEqual(["backup.failed", "backup.succeeded", "drill.passed"]);
      expect(events.find((e) => e.event === "backup.succeeded")).toMatchObject({
        source: "shinkei",
        offsite: "not configured",
      });
      expect(String(events.find((e) => e.event === "backup.failed")!.error)).toBe(
        `cannot use the backup folder ${join(blocked, "sub")}: ENOTDIR`,
      );
    } finally {
      hook.stop(true);
    }
  });

  test("a scheduled drill with no good backup to drill reaches the webhook as failed", async () => {
    const events: Record<string, unknown>[] = [];
    const hook = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch: async (r) => (events.push((await r.json()) as Record<string, unknown>), new Response("ok")),
    });
    try {
      // An empty folder (backups stopped, or went elsewhere): no drill can pass.
      const config = loadConfig({ ...env, BACKUP_WEBHOOK_URL: `http://127.0.0.1:${hook.port}/hook` });
      const lines: Record<string, unknown>[] = [];
      await scheduledDrill({ sql: db.sql, config, log: (l) => lines.push(l) }, new Date(Date.UTC(2031, 1, 2, 3)));
      expect(lines.find((l) => l.level === "warn")).toMatchObject({ msg: "drill skipped: no good backup to drill" });
      const [event] = await until("the webhook to hear of the drill", async () => events.length > 0 && events, 5000);
      expect(event).toMatchObject({ event: "drill.failed", error: "no good backup of this database to drill" });
    } finally {
      hook.stop(true);
    }
  });

  test("a scheduled drill that cannot reach the database at its slot reaches the webhook as failed", async () => {
    const events: Record<string, unknown>[] = [];
    const hook = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch: async (r) => (events.push((await r.json()) as Record<string, unknown>), new Response("ok")),
    });
    // The database is down when the drill's slot comes: nothing listens on its port.
    const closed = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = closed.port;
    closed.stop(true);
    const down = connect(`postgres://postgres@127.0.0.1:${port}/shinkei_down`, { max: 1 });
    try {
      const config = loadConfig({ ...env, BACKUP_WEBHOOK_URL: `http://127.0.0.1:${hook.port}/hook` });
      const lines: Record<string, unknown>[] = [];
      await scheduledDrill({ sql: down, config, log: (l) => lines.push(l) }, new Date(Date.UTC(2031, 0, 5, 3)));
      expect(lines.find((l) => l.level === "error")).toMatchObject({ msg: "drill failed" });
      // As a backup whose claim fails is backup.failed: a monitor listening to the webhook alone hears of it.
      const [event] = await until("the webhook to hear of the drill", async () => events.length > 0 && events, 5000);
      expect(event).toMatchObject({ source: "shinkei", event: "drill.failed" });
      expect(String(event!.error)).toContain("ECONNREFUSED");

      // The point-in-time drill's schedule alike (every second here; WAL_ARCHIVE is not needed to run it).
      const pitr = startPitrDrills({
        sql: down,
        config: { ...config, wal: { ...config.wal, pitrDrillSchedule: "* * * * * *" } },
        log: () => {},
      });
      try {
        await until(
          "the webhook to hear of the pitr drill",
          async () => events.find((e) => e.event !== "drill.failed"),
          5000,
        );
      } finally {
        await pitr.stop();
      }
      expect(events.find((e) => e.event !== "drill.failed")).toMatchObject({ event: "pitr_drill.failed" });
    } finally {
      await down.end({ timeout: 1 });
      hook.stop(true);
    }
  });
});

/** A real backup renamed (its manifest too) as if taken `daysAgo` days ago: its new name. */
async function aged(path: string, daysAgo: number): Promise<string> {
  const name = backupName(new Date(Date.now() - daysAgo * DAY));
  const manifest = JSON.parse(await readFile(`${path}.manifest.json`, "utf8"));
  await rename(path, join(dirname(path), name));
  await writeFile(join(dirname(path), `${name}.manifest.json`), JSON.stringify({ ...manifest, file: name }));
  await rm(`${path}.manifest.json`);
  return name;
}

describe("retention", () => {
  test("prune deletes only our old backups, keeps the newest and foreign ones; --dry-run deletes nothing", async () => {
    const names = await pastBackups([45, 40, 31, 10, 1]);
    await writeFile(join(dir, "notes.txt"), "mine");
    await writeFile(join(dir, "shinkei_backup_old_manual.sql.gz"), "not our naming");
    await writeFile(
      join(dir, backupName(new Date(Date.now() - 50 * DAY)).replace(".sql.zst", ".sql.zst.bak")),
      "foreign",
    );
    const before = (await readdir(dir)).sort();
    const dry = await shinkei(["backup", "prune", "--dry-run"], env);
    expect(dry).toSucceed();
    expect(dry.stdout).toContain("dry run: nothing deleted");
    expect(dry.stdout.match(/would delete/g)?.length).toBe(3);
    expect((await readdir(dir)).sort()).toEqual(before);

    const r = await shinkei(["backup", "prune"], env);
    expect(r).toSucceed();
    const after = (await readdir(dir)).sort();
    expect(after).toEqual(before.filter((n) => !names.slice(0, 3).some((old) => n.startsWith(old))).sort());
    expect(after).toContain("notes.txt");
  });

  test("the newest good backup stays even when every backup is old", async () => {
    const names = await pastBackups([90, 60]);
    await shinkei(["backup", "prune"], env);
    expect(await backupFiles()).toEqual([names[1]!]);
  });

  test("two databases in one folder: each keeps its own newest and daily backups", async () => {
    // The other database backs up later each day: counted together, its backups took every place.
    const ours = await pastBackups([30, 20, 12]);
    const theirs = await pastBackups([29.9, 19.9, 11.9, 5], undefined, "another_app");
    const r = await shinkei(["backup", "prune", "--dry-run"], {
      ...env,
      BACKUP_KEEP_DAYS: "3",
      BACKUP_KEEP_DAILY: "2",
    });
    expect(r).toSucceed();
    const row = (name: string) => r.stdout.split("\n").find((l) => l.includes(name));
    expect(ours.map((name) => /\skeep\s/.test(row(name)!))).toEqual([false, true, true]);
    // Theirs are another service's to decide on: not listed, only counted.
    expect(theirs.map(row)).toEqual([undefined, undefined, undefined, undefined]);
    expect(r.stdout).toContain(
      "  4 backup(s) of 1 other database(s) or server(s) left to their own service's retention",
    );
  });

  test("a service without S3 leaves the other database's backups its service has not copied off-site", async () => {
    const other = await seededDatabase("schedule_other", "o");
    const s3 = await TestS3.start();
    try {
      // The other database's service copies off-site, but S3 was down: its backups wait in this folder.
      const otherEnv = { DATABASE_URL: other.url, BACKUP_DIR: dir };
      const uncopied = await aged(await takeBackup(otherEnv), 40);
      await takeBackup(otherEnv);
      const theirs = await shinkei(["backup", "prune", "--dry-run"], { ...otherEnv, ...s3.env() });
      expect(theirs.stdout).toMatch(new RegExp(`${uncopied}\\s+keep\\s+not yet copied off-site`));

      // This database's service, without S3_BUCKET, runs its schedule in the same folder.
      const lines: Record<string, unknown>[] = [];
      const slot = new Date(Date.UTC(2033, 0, 1, 2, 0, 0));
      await scheduledRun({ sql: db.sql, config: loadConfig(env), log: (l) => void lines.push(l) }, slot);
      expect(lines.some((l) => l.msg === "backup finished")).toBe(true);
      expect(await readdir(dir)).toContain(uncopied);
      const left = `${dir}: 2 backup(s) of 1 other database(s) or server(s) left to their own service's retention`;
      expect(lines.find((l) => l.msg === "retention")).toMatchObject({ removedLocal: [], leftAlone: [left] });
      // `backup prune` says so too, and lists only this database's backups.
      const dry = await shinkei(["backup", "prune", "--dry-run"], env);
      expect(dry).toSucceed();
      expect(dry.stdout).toContain("2 backup(s) of 1 other database(s) or server(s) left to their own service's");
      expect(dry.stdout).not.toContain(uncopied);
    } finally {
      await s3.stop();
      await other.drop();
    }
  });

  test("off-site, one bucket prefix for two databases: each service prunes only its own copies", async () => {
    const other = await seededDatabase("schedule_other", "o");
    const s3 = await TestS3.start();
    const prefix = "shared/";
    const keys = async () =>
      ((await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }))).Contents ?? []).map(
        (o) => o.Key!.slice(prefix.length),
      );
    try {
      // The other database's service keeps its copies a year (S3_KEEP_DAYS=365): one from 40 days ago is there.
      const otherEnv = {
        DATABASE_URL: other.url,
        BACKUP_DIR: await tempDir("schedule-other"),
        ...s3.env(prefix),
        S3_KEEP_DAYS: "365",
      };
      const path = await takeBackup(otherEnv);
      const old = backupName(new Date(Date.now() - 40 * DAY));
      const manifest = JSON.parse(await readFile(`${path}.manifest.json`, "utf8"));
      const put = (Key: string, Body: Uint8Array | string) =>
        s3.client().send(new PutObjectCommand({ Bucket: s3.bucket, Key: prefix + Key, Body }));
      await put(old, await Bun.file(path).bytes());
      await put(`${old}.manifest.json`, JSON.stringify({ ...manifest, file: old }));
      expect(await keys()).toContain(old);

      // This database's service shares the prefix and keeps 30 days (S3_KEEP_DAYS defaults to BACKUP_KEEP_DAYS).
      const mine = { ...env, ...s3.env(prefix) };
      // A name is unique in its own folder only: taken in the same second, the two would share a key.
      await Bun.sleep(1100);
      await takeBackup(mine);
      const r = await shinkei(["backup", "prune"], mine);
      expect(r).toSucceed();
      expect(await keys()).toContain(old);
      // Only the bucket holds the other database's copies (the two keep their own folders).
      const offsite = r.stdout.slice(r.stdout.indexOf(`s3://${s3.bucket}/${prefix}`));
      expect(offsite).toContain(
        "  2 backup(s) of 1 other database(s) or server(s) left to their own service's retention",
      );
      expect(offsite).not.toContain(old);
    } finally {
      await s3.stop();
      await other.drop();
    }
  });

  test("with off-site copies on, a backup not yet copied stays however old", async () => {
    const s3 = await TestS3.start();
    try {
      // Copied to where this service copies (a copy recorded elsewhere is none here: see offsite.test.ts).
      const here = `s3://${s3.bucket}/backups/`;
      const copied = await pastBackups([60], here);
      const uncopied = await pastBackups([50]);
      const recent = await pastBackups([1], here);
      await shinkei(["backup", "prune"], { ...env, ...s3.env() });
      expect(await backupFiles()).toEqual([...uncopied, ...recent].sort());
      expect(copied).toHaveLength(1);
    } finally {
      await s3.stop();
    }
  });
});

describe("freshness", () => {
  test("backup check passes for a fresh backup and fails for a stale or missing one", async () => {
    let r = await shinkei(["backup", "check"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`no good backup of "${db.name}" on \\S+:\\d+ in`));
    await pastBackups([2]);
    r = await shinkei(["backup", "check"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is 2d 0h old, more than 1d 2h/);
    await shinkei(["backup"], env);
    expect(await shinkei(["backup", "drill"], env)).toSucceed();
    r = await shinkei(["backup", "check", "--json"], env);
    expect(r).toSucceed();
    expect(JSON.parse(r.stdout).ageSeconds).toBeLessThan(60);
  });
});
