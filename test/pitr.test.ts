import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { appendFile, chmod, copyFile, mkdir, readdir, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { startCluster, startClusterFrom, TEST_WAL_SEGMENT_BYTES, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { receiverFlushed, startBackupService, streamingEnv } from "./support/wal.ts";
import { binaryPath, shinkei } from "./support/cli.ts";
import { parseLsn, parseSegment, segmentName, segnoOf } from "../src/wal/segments.ts";

const lsnSegment = (lsn: string) =>
  segmentName(1, segnoOf(parseLsn(lsn), TEST_WAL_SEGMENT_BYTES), TEST_WAL_SEGMENT_BYTES);

/**
 * A restore host: the archive and a base backup copied, readable by the server's OS user, the
 * backup unpacked with restore_command = shinkei pitr wal-fetch and `settings`; started, and
 * waited on until recovery has ended.
 */
async function recoverCopy(base: string, settings: string[]) {
  const restore = await tempDir("pitr-restore");
  const owner = (path: string) => Bun.spawnSync(["chown", "-R", "postgres:postgres", path]).exitCode;
  expect(Bun.spawnSync(["cp", "-a", join(dir, "wal"), join(restore, "wal")]).exitCode).toBe(0);
  const dataDir = join(restore, "data");
  expect(Bun.spawnSync(["mkdir", "-m", "700", dataDir]).exitCode).toBe(0);
  expect(Bun.spawnSync(["tar", "-x", "--zstd", "-f", join(dir, "base", base), "-C", dataDir]).exitCode).toBe(0);
  Bun.spawnSync(["chmod", "755", restore]);
  owner(restore);
  await appendFile(
    join(dataDir, "postgresql.auto.conf"),
    [`restore_command = 'BACKUP_DIR=${restore} ${restoreBinary} pitr wal-fetch %f %p'`, ...settings, ""].join("\n"),
  );
  await Bun.write(join(dataDir, "recovery.signal"), "");
  owner(dataDir);
  const recovered = await startClusterFrom(dataDir, { removeOnStop: restore });
  const rsql = connect(recovered.url("shinkei"), { max: 1 });
  await until("recovery to end", async () => (await rsql`select pg_is_in_recovery() as r`)[0]!.r === false, 60_000);
  const log = await Bun.file(join(dataDir, "server.log")).text();
  return {
    sql: rsql,
    log: () => log,
    async stop() {
      await rsql.end({ timeout: 1 });
      await recovered.stop();
    },
  };
}
import { Service } from "./support/process.ts";
import { connect, type Sql } from "../src/pg/db.ts";
import { listBaseBackups } from "../src/wal/base.ts";
import { verifyBaseBackup } from "../src/wal/verify-base.ts";
import { readPitrSnapshot, readSnapshot } from "../src/metrics/snapshot.ts";
import { archiveTrust } from "../src/wal/trust.ts";
import { statusView } from "../src/metrics/view.ts";
import { loadConfig } from "../src/config/index.ts";

// A cluster of our own and the compiled binary: seconds per step on a busy 2-core machine.
setDefaultTimeout(90_000);

let cluster: TestCluster;
let sql: Sql;
let dir: string;
let env: Record<string, string>;
let service: Service | undefined;
/**
 * restore_command runs as the server's OS user, which may not reach this checkout: a copy of the
 * binary in a folder it can read, made once for the file's recoveries (it is 100+ MB).
 */
let restoreBinary: string;

beforeAll(async () => {
  cluster = await startCluster();
  dir = await tempDir("pitr");
  env = streamingEnv(cluster.url("shinkei"), dir);
  service = await startBackupService(env);
  const binDir = await tempDir("pitr-bin");
  restoreBinary = join(binDir, "shinkei");
  await copyFile(binaryPath, restoreBinary);
  await chmod(restoreBinary, 0o755);
  await chmod(binDir, 0o755);
  sql = connect(cluster.url("shinkei"), { max: 2 });
});
afterAll(async () => {
  if (service) service.proc.kill("SIGKILL");
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
});

/** One series' value in a Prometheus scrape, by its exact name and labels; NaN when it is missing. */
const seriesValue = (scrape: string, series: string) =>
  Number(new RegExp(`^${series.replace(/[{}"]/g, "\\$&")} (\\S+)$`, "m").exec(scrape)?.[1]);

describe("base backups and point-in-time status", () => {
  test("backup base, then streamed WAL: pitr status shows a window from the base to near the last commit", async () => {
    const b = await shinkei(["backup", "base", "--verify", "--json"], env);
    expect(b.stderr).toBe("");
    expect(b).toSucceed();
    const base = JSON.parse(b.stdout);
    expect(base.verified).toMatchObject({ ok: true, problems: [], pgVerifybackup: expect.stringMatching(/^\d+/) });
    expect(base.file).toMatch(/^shinkei_base_\d{8}_\d{6}\.tar\.zst$/);
    expect(base.timeline).toBe(1);
    expect(base.startLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(base.sizeBytes).toBeGreaterThan(1000);
    // The server's own backup_manifest is kept beside it, and the tar holds the data directory.
    expect(await readdir(join(dir, "base"))).toContain(base.backupManifestFile);
    const tar = Bun.spawnSync(["tar", "-t", "--zstd", "-f", join(dir, "base", base.file)]);
    expect(tar.exitCode).toBe(0);
    expect(tar.stdout.toString()).toContain("PG_VERSION");
    expect(tar.stdout.toString()).toContain("global/pg_control");

    await sql`create table if not exists notes (body text, at timestamptz default clock_timestamp())`;
    const [{ at, lsn }] = (await sql<
      { at: Date; lsn: string }[]
    >`insert into notes (body) values ('last words') returning at, pg_current_wal_insert_lsn()::text as lsn`) as any;
    await receiverFlushed(sql, lsn);

    const r = await shinkei(["pitr", "status", "--json"], env);
    expect(r).toSucceed();
    const s = JSON.parse(r.stdout);
    expect(s.archive).toBe("stream");
    expect(s.window.timeline).toBe(1);
    expect(s.window.earliest).toBe(base.finishedAt);
    expect(Math.abs(Date.parse(s.window.latest) - at.getTime())).toBeLessThan(5000);
    expect(s.gaps).toEqual([]);
    expect(s.baseBackups).toEqual([
      {
        file: base.file,
        finishedAt: base.finishedAt,
        timeline: 1,
        startLsn: base.startLsn,
        stopLsn: base.stopLsn,
        walComplete: true,
      },
    ]);
    expect(s.receiver.connected).toBe(true);
    expect(s.receiver.state).toBe("streaming");
    expect(s.receiver.lagBytes).toBeLessThan(1024 * 1024);
    expect(s.slot.name).toBe("shinkei");
    expect(s.slot.walStatus).toBe("reserved");
    expect(typeof s.slot.safeWalSize).toBe("number");
    expect(s.problems).toEqual([]);
    expect(s.timelines[0].segments).toBeGreaterThanOrEqual(1);
    expect(s.receiver.positionHidden).toBe(false);
    expect(s.unsealed.segments).toBeGreaterThanOrEqual(0);

    // A role without pg_read_all_stats sees the receiver but not its position: the slot says it.
    await sql`create role shinkei_watcher login`;
    const watcherUrl = new URL(env.DATABASE_URL!);
    watcherUrl.username = "shinkei_watcher";
    const hidden = JSON.parse(
      (await shinkei(["pitr", "status", "--json"], { ...env, DATABASE_URL: watcherUrl.toString() })).stdout,
    );
    expect(hidden.receiver).toMatchObject({ connected: true, state: null, positionHidden: true });
    expect(hidden.receiver.lagBytes).toBeLessThan(1024 * 1024);
    expect(hidden.receiver.lagSeconds).toBeLessThan(60);

    // The window shows in backup --list and in /ready too.
    const list = await shinkei(["backup", "--list"], env);
    expect(list.stdout).toContain(`point-in-time window: ${base.finishedAt} .. `);
    const token = "metrics-token-0123456789";
    const server = await Service.start(["serve"], {
      ...env,
      HOST: "127.0.0.1",
      PORT: "0",
      COOKIE_SECURE: "false",
      METRICS_TOKEN: token,
      OPS_TOKEN: token,
    });
    try {
      const listening = await server.waitFor((l) => l.msg === "listening");
      // The status page: the window, the base backup on the timeline, the window drawn as a band.
      const page = await (await fetch(`${listening.url}/`, { headers: { authorization: `Bearer ${token}` } })).text();
      const utc = (iso: string) => `${iso.slice(0, 19).replace("T", " ")} UTC`;
      expect(page).toContain(`<span id="pitr-window" class="">${utc(base.finishedAt)} .. `);
      expect(page).toMatch(new RegExp(`<span id="pitr-base">${base.file}, (less than a minute|1 minute) ago`));
      expect(page).toContain('id="wal-window"');
      expect(page).toContain('data-kind="base"');
      expect(page).toContain("No point-in-time drill has passed yet");
      const ready = await (await fetch(`${listening.url}/ready`)).json();
      expect(ready.pitr.earliest).toBe(base.finishedAt);
      expect(ready.pitr.timeline).toBe(1);
      expect(ready.pitr.gaps).toBe(0);
      // ... and in the metrics: the base backup as a kind of its own, the window, its gaps.
      const scrape = await (
        await fetch(`${listening.url}/metrics`, { headers: { authorization: `Bearer ${token}` } })
      ).text();
      const value = (series: string) => seriesValue(scrape, series);
      expect(value('shinkei_backups{kind="base"}')).toBe(1);
      expect(value('shinkei_backup_newest_size_bytes{kind="base"}')).toBe(base.sizeBytes);
      expect(value("shinkei_pitr_window_start_timestamp_seconds")).toBe(Date.parse(base.finishedAt) / 1000);
      // The window only grows while the receiver streams: the scrape's end is at or after the status's
      // (read before it), and not after now.
      const windowEndMs = value("shinkei_pitr_window_end_timestamp_seconds") * 1000;
      expect(windowEndMs).toBeGreaterThanOrEqual(Date.parse(s.window.latest) - 1000);
      expect(windowEndMs).toBeLessThanOrEqual(Date.now());
      expect(value("shinkei_pitr_max_lag_seconds")).toBe(300);
      expect(value("shinkei_wal_gaps")).toBe(0);
      expect(value("shinkei_wal_gaps_after_newest_base_backup")).toBe(0);
      // The receiver and its slot, from the database: streaming, nothing missing, WAL reserved.
      expect(value('shinkei_backup_source_up{source="receiver"}')).toBe(1);
      expect(value("shinkei_wal_receiver_connected")).toBe(1);
      expect(value("shinkei_wal_archive_lag_bytes")).toBeLessThan(1024 * 1024);
      expect(value("shinkei_wal_archive_lag_seconds")).toBeLessThan(5);
      expect(value('shinkei_wal_slot_active{slot="shinkei"}')).toBe(1);
      expect(value('shinkei_wal_slot_status{slot="shinkei",status="reserved"}')).toBe(1);
      expect(value('shinkei_wal_slot_status{slot="shinkei",status="lost"}')).toBe(0);
      expect(value('shinkei_wal_slot_safe_wal_size_bytes{slot="shinkei"}')).toBeGreaterThan(0);
    } finally {
      await server.stop();
    }
  });

  test("the archive recovers: the base plus WAL from `pitr wal-fetch` replays to between two commits", async () => {
    await sql`insert into notes (body) values ('before the target')`;
    const { target } = (await sql<{ target: string }[]>`select clock_timestamp()::text as target`)[0]!;
    await sql`insert into notes (body) values ('after the target')`;
    const { lsn } = (await sql<{ lsn: string }[]>`select pg_current_wal_insert_lsn()::text as lsn`)[0]!;
    await sql`select pg_switch_wal()`;
    // Everything up to that commit is archived: the segment that holds it is sealed.
    await until("the segment with the last commit archived", () =>
      Bun.file(join(dir, "wal", "00000001", `${lsnSegment(lsn)}.json`)).exists(),
    );
    const base = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout).baseBackups[0].file as string;

    const recovered = await recoverCopy(base, [
      `recovery_target_time = '${target}'`,
      "recovery_target_action = 'promote'",
    ]);
    try {
      const rows = (await recovered.sql<{ body: string }[]>`select body from notes`).map((r) => r.body);
      expect(rows).toContain("before the target");
      expect(rows).toContain("last words");
      expect(rows).not.toContain("after the target");
      expect(recovered.log()).toContain("restored log file");
      expect(recovered.log()).toContain("recovery stopping before commit");
    } finally {
      await recovered.stop();
    }
  });

  test("recovery to the archive's end reaches the last commit, only in the segment still being received", async () => {
    const { lsn } = (
      await sql<
        { lsn: string }[]
      >`insert into notes (body) values ('seconds ago') returning pg_current_wal_insert_lsn()::text as lsn`
    )[0]!;
    await receiverFlushed(sql, lsn);
    // Not archived whole: it is in the segment being received.
    expect(await Bun.file(join(dir, "wal", "spool", `${lsnSegment(lsn)}.partial`)).exists()).toBe(true);
    const base = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout).baseBackups[0].file as string;
    const recovered = await recoverCopy(base, []);
    try {
      const rows = (await recovered.sql<{ body: string }[]>`select body from notes`).map((r) => r.body);
      expect(rows).toContain("seconds ago");
      expect(rows).toContain("after the target");
    } finally {
      await recovered.stop();
    }
  });

  test("verification: pg_verifybackup catches a base backup whose contents disagree with the manifest", async () => {
    const [base] = await listBaseBackups(dir);
    // The untouched original is verified while the tampered copy is made and verified: neither waits on the other.
    const original = verifyBaseBackup(dir, base!);
    // A copy in a folder of its own, one data file changed inside the tar and our hashes made to fit.
    const other = await tempDir("base-tampered");
    // Only PG_VERSION changes: the tar is edited in place (out, changed, back in), not unpacked whole and
    // packed again. Blocking factor 1: the archive need not be a whole number of tar's default 10 KiB records.
    const work = await tempDir("base-edit");
    const plain = join(work, "base.tar");
    expect(Bun.spawnSync(["zstd", "-q", "-d", base!.path, "-o", plain]).exitCode).toBe(0);
    const member = Bun.spawnSync(["tar", "-t", "-f", plain])
      .stdout.toString()
      .split("\n")
      .find((n) => /^(\.\/)?PG_VERSION$/.test(n))!;
    expect(member).toBeDefined();
    const version = Bun.spawnSync(["tar", "-x", "-O", "-f", plain, member]).stdout.toString();
    expect(version).toMatch(/^\d+\n$/);
    await mkdir(join(work, "member"));
    await writeFile(
      join(work, "member", member),
      version.replace(/^\d/, (d) => String((Number(d) + 1) % 10)),
    );
    expect(Bun.spawnSync(["tar", "-b", "1", "--delete", "-f", plain, member]).exitCode).toBe(0);
    expect(Bun.spawnSync(["tar", "-b", "1", "-r", "-f", plain, "-C", join(work, "member"), member]).exitCode).toBe(0);
    await mkdir(join(other, "base"));
    const tampered = join(other, "base", base!.name);
    expect(Bun.spawnSync(["zstd", "-q", plain, "-o", tampered]).exitCode).toBe(0);
    await copyFile(
      join(dir, "base", base!.manifest.backupManifestFile),
      join(other, "base", base!.manifest.backupManifestFile),
    );
    const sha = new Bun.CryptoHasher("sha256").update(await readFile(tampered)).digest("hex");
    await Bun.write(
      `${tampered}.manifest.json`,
      JSON.stringify({ ...base!.manifest, sha256: sha, sizeBytes: Bun.file(tampered).size }),
    );
    const [copy] = await listBaseBackups(other);
    const v = await verifyBaseBackup(other, copy!);
    expect(v.ok).toBe(false);
    expect(v.problems.join(" ")).toContain("PG_VERSION");
    // The untouched original still passes.
    expect((await original).ok).toBe(true);
  });

  test("wal-fetch: a missing file exits 1 (recovery asks for such), a damaged one aborts (126), no write", async () => {
    const target = join(await tempDir("fetch"), "RECOVERYXLOG");
    const missing = await shinkei(["pitr", "wal-fetch", "00000009.history", target], { BACKUP_DIR: dir });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("not in the WAL archive");
    const bad = await shinkei(["pitr", "wal-fetch", "../../etc/passwd", target], { BACKUP_DIR: dir });
    expect(bad.code).toBe(2);
    const walDir = join(dir, "wal", "00000001");
    const name = (await readdir(walDir))
      .filter((n) => /^[0-9A-F]{24}\.json$/.test(n))
      .sort()[0]!
      .replace(".json", "");
    const ok = await shinkei(["pitr", "wal-fetch", name, target], { BACKUP_DIR: dir });
    expect(ok).toSucceed();
    expect(Bun.file(target).size).toBe(TEST_WAL_SEGMENT_BYTES);
    await rm(target);
    const stored = join(walDir, `${name}.zst`);
    const bytes = await readFile(stored);
    bytes[bytes.length - 20] = bytes[bytes.length - 20]! ^ 0xff;
    await writeFile(stored, bytes);
    const corrupt = await shinkei(["pitr", "wal-fetch", name, target], { BACKUP_DIR: dir });
    // Above 125: PostgreSQL aborts recovery instead of ending it early as if the archive ended here.
    expect(corrupt.code).toBe(126);
    expect(corrupt.stderr).toContain("does not match its record");
    expect(await Bun.file(target).exists()).toBe(false);
    expect((await readdir(dirname(target))).length).toBe(0);
  });

  test("backup check passes on a healthy archive, then fails on a gap after the newest base backup", async () => {
    // The dump checks come first in a healthy run: a dump and a drill.
    expect(await shinkei(["backup"], env)).toSucceed();
    expect(await shinkei(["backup", "drill"], env)).toSucceed();
    // With the archive on, a point-in-time recovery drill must have passed too.
    const undrilled = await shinkei(["backup", "check"], env);
    expect(undrilled.code).toBe(1);
    expect(undrilled.stderr).toContain("no point-in-time recovery drill has passed yet");
    const pitrDrill = await shinkei(["pitr", "drill"], env);
    expect(pitrDrill.stderr).not.toContain("✖");
    expect(pitrDrill).toSucceed();
    for (let i = 0; i < 3; i++) {
      await sql`insert into notes (body) values (${`n${i}`})`;
      await sql`select pg_switch_wal()`;
    }
    const walDir = join(dir, "wal", "00000001");
    const archived = async () => (await readdir(walDir)).filter((n) => n.endsWith(".json")).sort();
    await until("three more archived segments", async () => (await archived()).length >= 4);
    const ok = await shinkei(["backup", "check", "--json"], env);
    expect(ok.stderr).toBe("");
    expect(ok).toSucceed();
    expect(JSON.parse(ok.stdout).pitr.window.earliest).not.toBeNull();

    // Lose one archived segment in the middle: a real hole in the archive.
    const names = await archived();
    const victim = names.at(-2)!.replace(/\.json$/, "");
    for (const f of (await readdir(walDir)).filter((n) => n.startsWith(victim))) await rm(join(walDir, f));
    const bad = await shinkei(["backup", "check"], env);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("WAL gap after the newest base backup");
    expect(bad.stderr).toContain(victim);
    const s = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
    expect(s.gaps).toEqual([{ timeline: 1, from: victim, to: victim, segments: 1 }]);
    // The status page's view: the gap is a problem, and an event at the time its neighbour came.
    const view = statusView(
      await readSnapshot(dir, undefined),
      loadConfig(env).backup,
      new Date(),
      await readPitrSnapshot(dir, archiveTrust(loadConfig(env).backup.age)),
    );
    expect(view.pitr!.gapsAfterNewestBase).toBe(1);
    expect(view.problems.map((p) => p.text)).toContain(
      "1 gap in the WAL after the newest base backup: recovery stops at the first. Take a base backup now.",
    );
    expect(view.events.filter((e) => e.kind === "wal-gap").map((e) => e.backup)).toEqual([victim]);
    expect(view.events.some((e) => e.kind === "drill-passed" && e.text.startsWith("point-in-time drill passed"))).toBe(
      true,
    );
  });

  test("a service killed with SIGKILL takes its receiver with it; backup check then fails on lag", async () => {
    service!.proc.kill("SIGKILL");
    await service!.proc.exited;
    service = undefined;
    await until(
      "the slot to be released",
      async () => (await sql`select active from pg_replication_slots where slot_name = 'shinkei'`)[0]?.active === false,
    );
    await sql`insert into notes (body) values ('unarchived')`;
    const r = await until("backup check to fail on lag", async () => {
      const c = await shinkei(["backup", "check"], { ...env, PITR_MAX_LAG: "1s" });
      return c.code === 1 && c.stderr.includes("behind the server") ? c : null;
    });
    expect(r.stderr).toContain("PITR_MAX_LAG");
    const s = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
    expect(s.receiver.connected).toBe(false);
    expect(s.receiver.lagBytes).toBeGreaterThan(0);
    expect(s.slot.active).toBe(false);
    // The metrics say the same, for the alerts (ShinkeiPitrLagging, ShinkeiWalReceiverDown).
    const token = "metrics-token-0123456789";
    const server = await Service.start(["serve"], {
      ...env,
      HOST: "127.0.0.1",
      PORT: "0",
      COOKIE_SECURE: "false",
      METRICS_TOKEN: token,
    });
    try {
      const listening = await server.waitFor((l) => l.msg === "listening");
      const scrape = await (
        await fetch(`${listening.url}/metrics`, { headers: { authorization: `Bearer ${token}` } })
      ).text();
      const value = (series: string) => seriesValue(scrape, series);
      expect(value("shinkei_wal_receiver_connected")).toBe(0);
      expect(value("shinkei_wal_archive_lag_bytes")).toBeGreaterThan(0);
      expect(value("shinkei_wal_archive_lag_seconds")).toBeGreaterThan(0);
      expect(value('shinkei_wal_slot_active{slot="shinkei"}')).toBe(0);
    } finally {
      await server.stop();
    }
  });
  test("a finished segment not yet sealed is held: no gap in the window, and wal-fetch serves it", async () => {
    // The service is gone (previous test): nothing seals the spool. Put an archived segment with
    // archived ones on both sides back where pg_receivewal leaves a finished one, and take away
    // what the archiver made of it.
    const walDir = join(dir, "wal", "00000001");
    const spool = join(dir, "wal", "spool");
    const names = (await readdir(walDir))
      .filter((n) => /^[0-9A-F]{24}\.json$/.test(n))
      .sort()
      .map((n) => n.replace(".json", ""));
    expect(names.length).toBeGreaterThanOrEqual(3);
    const mid = names.at(-2)!;
    // Names of one timeline sort as their positions do.
    const inGap = async () => {
      const s = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
      return (s.gaps as { from: string; to: string }[]).some((g) => g.from <= mid && mid <= g.to);
    };
    expect(await shinkei(["pitr", "wal-fetch", mid, join(spool, mid)], { BACKUP_DIR: dir })).toSucceed();
    for (const f of (await readdir(walDir)).filter((n) => n.startsWith(mid))) await rm(join(walDir, f));
    expect(await inGap()).toBe(false);
    const target = join(await tempDir("fetch-spooled"), "RECOVERYXLOG");
    expect(await shinkei(["pitr", "wal-fetch", mid, target], { BACKUP_DIR: dir })).toSucceed();
    expect(await Bun.file(target).bytes()).toEqual(await Bun.file(join(spool, mid)).bytes());
    // Held, but waiting there for an hour means the archiver is not sealing: backup check says so.
    const hourAgo = new Date(Date.now() - 3_600_000);
    await utimes(join(spool, mid), hourAgo, hourAgo);
    const s = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
    expect(s.unsealed.segments).toBeGreaterThanOrEqual(1);
    expect(Date.parse(s.unsealed.oldestReceivedAt)).toBeLessThanOrEqual(hourAgo.getTime() + 1000);
    const check = await shinkei(["backup", "check"], env);
    expect(check.code).toBe(1);
    expect(check.stderr).toContain("wait in the spool unsealed since");
    // Gone from the spool too, it is a gap.
    await rm(join(spool, mid));
    expect(await inGap()).toBe(true);
  });
});
