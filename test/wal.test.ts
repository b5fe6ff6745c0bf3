import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { zstdDecompressSync } from "node:zlib";
import { startCluster, startStandby, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { connect, ensureDatabase, type Sql } from "../src/pg/db.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { loadConfig } from "../src/config/index.ts";
import type { Log } from "../src/log.ts";
import { ShinkeiError } from "../src/errors.ts";
import { decrypt, writeIdentity } from "../src/storage/crypt.ts";
import { checkForGap, startWalStream, type WalStream } from "../src/wal/stream.ts";
import { serverInfo } from "../src/pg/server-info.ts";
import { ensureSlot, slotStatus } from "../src/wal/slot.ts";
import { listArchive, walRoot } from "../src/wal/archive.ts";
import { findGaps } from "../src/wal/gaps.ts";
import { createBaseBackup } from "../src/wal/base.ts";
import { pruneWalLocal } from "../src/wal/prune.ts";
import { scheduledBaseBackup, watchSlot } from "../src/wal/service.ts";
import { startWalService } from "../src/service/backup-service.ts";
import { pitrProblems, pitrStatus } from "../src/wal/status.ts";
import { shinkei } from "./support/cli.ts";
import { parseLsn, parseSegment, segmentName, segnoOf } from "../src/wal/segments.ts";
import { RECEIVER_APP_NAME } from "../src/wal/receiver.ts";

let cluster: TestCluster;
let sql: Sql;
let url: string;
let segmentBytes: number;

beforeAll(async () => {
  cluster = await startCluster();
  url = cluster.url("shinkei");
  await ensureDatabase(url);
  sql = connect(url, { max: 4 });
  await migrate(sql);
  await sql`create table canary (v text)`;
  segmentBytes = (await serverInfo(sql)).segmentBytes;
});
afterAll(async () => {
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
});

type Line = Record<string, unknown>;
function collector(): { log: Log; lines: Line[] } {
  const lines: Line[] = [];
  return { lines, log: (l) => void lines.push(l) };
}

/** The receiver has flushed everything up to `lsn` (the server's own view of it). */
const flushedTo = (lsn: string) =>
  until(`the receiver to flush ${lsn}`, async () => {
    const [r] = await sql<
      { ok: boolean }[]
    >`select flush_lsn >= ${lsn}::pg_lsn as ok from pg_stat_replication where application_name = ${RECEIVER_APP_NAME}`;
    return r?.ok;
  });

/** Write a row, end its segment, and wait until that segment is in the archive; its name. */
async function commitAndArchive(stream: WalStream, dir: string, value: string): Promise<string> {
  const { lsn } = (
    await sql<
      { lsn: string }[]
    >`insert into canary values (${value}) returning pg_current_wal_insert_lsn()::text as lsn`
  )[0]!;
  await sql`select pg_switch_wal()`;
  const { tl } = (await sql<{ tl: number }[]>`select timeline_id as tl from pg_control_checkpoint()`)[0]!;
  const name = segmentName(tl, segnoOf(parseLsn(lsn), segmentBytes), segmentBytes);
  await until(`${name} in the archive`, async () => {
    await stream.drain();
    return (await listArchive(walRoot(dir))).some((r) => r.name === name);
  });
  return name;
}

/** A process's nice value, as the kernel reports it (/proc/<pid>/stat, field 19). */
const niceOf = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
};

function configFor(dir: string, extra: Record<string, string> = {}) {
  return loadConfig({ DATABASE_URL: url, BACKUP_DIR: dir, WAL_ARCHIVE: "stream", ...extra });
}

describe("continuous WAL archive", () => {
  test("streams every commit: the receiver's durable position reaches the last commit, and its segment is archived with a verifiable record", async () => {
    const dir = await tempDir("wal");
    const { log, lines } = collector();
    const stream = await startWalStream({ sql, config: configFor(dir), log, pollMs: 100 });
    try {
      const { lsn } = (
        await sql<
          { lsn: string }[]
        >`insert into canary values ('streamed-row-7781') returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await flushedTo(lsn);
      const name = await commitAndArchive(stream, dir, "second-row");
      const records = await listArchive(walRoot(dir));
      const r = records.find((x) => x.name === name)!;
      expect(r.kind).toBe("segment");
      expect(r.encryption).toBeUndefined();
      const stored = await readFile(join(walRoot(dir), "00000001", r.file));
      expect(stored.length).toBe(r.sizeBytes);
      expect(new Bun.CryptoHasher("sha256").update(stored).digest("hex")).toBe(r.sha256);
      const wal = zstdDecompressSync(stored);
      expect(wal.length).toBe(segmentBytes);
      expect(new Bun.CryptoHasher("sha256").update(wal).digest("hex")).toBe(r.originalSha256);
      expect(wal.includes("second-row")).toBe(true);
      expect(lines.some((l) => l.msg === "wal receiver started" && l.nice === 10)).toBe(true);
      // WAL_RECEIVER_NICE's default: the receiver yields a busy CPU to the server's backends.
      expect(niceOf(stream.receiver.pid()!)).toBe(10);
      expect(lines.some((l) => l.msg === "wal archived" && l.file === name)).toBe(true);
      // Archived segments leave the spool; only the one being received stays.
      const spool = await readdir(join(walRoot(dir), "spool"));
      expect(spool.filter((n) => !n.endsWith(".partial"))).toEqual([]);
      const slot = await slotStatus(sql, "shinkei");
      expect(slot?.active).toBe(true);
      expect(slot?.walStatus).toBe("reserved");
    } finally {
      await stream.stop();
    }
    expect(lines.at(-1)?.msg === "wal receiver stopped" || lines.some((l) => l.msg === "wal receiver stopped")).toBe(
      true,
    );
  });

  test("a receiver killed with SIGKILL is restarted and, through the slot, leaves no gap", async () => {
    const dir = await tempDir("wal-kill");
    const { log, lines } = collector();
    const stream = await startWalStream({
      sql,
      config: configFor(dir, { WAL_SLOT: "shinkei_kill", WAL_RECEIVER_NICE: "3" }),
      log,
      pollMs: 100,
      backoffMs: { min: 300, max: 1000 },
    });
    try {
      const first = await commitAndArchive(stream, dir, "before-kill");
      const pid = stream.receiver.pid()!;
      process.kill(pid, "SIGKILL");
      // While no receiver runs, the server moves on through several segments.
      for (let i = 0; i < 3; i++) {
        await sql`insert into canary values (${`while-down-${i}`})`;
        await sql`select pg_switch_wal()`;
      }
      await until("a restart", async () => stream.receiver.pid() !== undefined && stream.receiver.pid() !== pid);
      const last = await commitAndArchive(stream, dir, "after-restart");
      // A restarted receiver runs at the configured priority too.
      expect(niceOf(stream.receiver.pid()!)).toBe(3);
      expect(lines.some((l) => l.msg === "wal receiver exited; restarting" && l.signal === "SIGKILL")).toBe(true);
      const records = await listArchive(walRoot(dir));
      const names = records.map((r) => r.name);
      expect(names[0]! <= first).toBe(true);
      expect(names).toContain(last);
      expect(findGaps(records, segmentBytes)).toEqual([]);
      // Everything between the first and the last archived segment is there: nothing was skipped.
      const segnos = records.map((r) => BigInt(`0x${r.name.slice(16)}`));
      expect(Number(segnos.at(-1)! - segnos[0]!) + 1).toBe(records.length);
      expect(records.length).toBeGreaterThanOrEqual(5);
    } finally {
      await stream.stop();
    }
  });

  test("encrypted segments hold no plaintext of a written row, and decrypt to the WAL that does", async () => {
    const dir = await tempDir("wal-age");
    const { log } = collector();
    // Public keys (not a passphrase, whose scrypt costs a second per file): the usual production setup.
    const key = join(await tempDir("wal-key"), "backup.key");
    const recipient = await writeIdentity(key);
    const config = configFor(dir, { WAL_SLOT: "shinkei_age", BACKUP_AGE_RECIPIENTS: recipient });
    const stream = await startWalStream({ sql, config, log, pollMs: 100 });
    let name: string;
    try {
      name = await commitAndArchive(stream, dir, "secret-canary-5521-plaintext");
    } finally {
      await stream.stop();
    }
    const records = await listArchive(walRoot(dir));
    const r = records.find((x) => x.name === name)!;
    expect(r.file.endsWith(".zst.age")).toBe(true);
    expect(r.encryption).toEqual({ method: "recipients", recipients: [recipient] });
    for (const tl of (await readdir(walRoot(dir))).filter((d) => d !== "spool")) {
      for (const f of await readdir(join(walRoot(dir), tl))) {
        const bytes = await readFile(join(walRoot(dir), tl, f));
        expect(bytes.includes("secret-canary-5521")).toBe(false);
        expect(unzstdSafe(bytes)?.includes("secret-canary-5521") ?? false).toBe(false);
      }
    }
    // The same bytes, decrypted with the key, do hold the row: the check above could have failed.
    const stored = Bun.file(join(walRoot(dir), "00000001", r.file)).stream();
    const plain = Buffer.from(
      await new Response(
        await decrypt(stored, { recipients: [], identityFile: key }, r.file, r.encryption),
      ).arrayBuffer(),
    );
    expect(zstdDecompressSync(plain).includes("secret-canary-5521")).toBe(true);
  });

  test("creating a slot on a server with unbounded max_slot_wal_keep_size is refused, naming the setting", async () => {
    await sql`alter system set max_slot_wal_keep_size = -1`;
    await sql`select pg_reload_conf()`;
    try {
      await until(
        "the reload",
        async () => (await sql`show max_slot_wal_keep_size`)[0]!.max_slot_wal_keep_size === "-1",
      );
      const error = await ensureSlot(sql, "shinkei_unbounded").catch((e) => e);
      expect(error).toBeInstanceOf(ShinkeiError);
      expect(error.code).toBe("WAL_SLOT_UNBOUNDED");
      expect(error.message).toContain("max_slot_wal_keep_size is -1");
      expect(error.message).toContain("disk is full");
      expect(error.hint).toContain("max_slot_wal_keep_size = ");
      expect(error.hint).toContain("WAL_SLOT=none");
      expect(await slotStatus(sql, "shinkei_unbounded")).toBeNull();
      // The service refuses before it streams anything.
      const dir = await tempDir("wal-refused");
      const refused = await startWalStream({
        sql,
        config: configFor(dir, { WAL_SLOT: "shinkei_unbounded" }),
        log: () => {},
      }).catch((e) => e);
      expect(refused.code).toBe("WAL_SLOT_UNBOUNDED");
    } finally {
      await sql`alter system reset max_slot_wal_keep_size`;
      await sql`select pg_reload_conf()`;
    }
  });

  test("a receiver named in synchronous_standby_names is refused: commits would wait on it", async () => {
    await sql`alter system set synchronous_standby_names = 'FIRST 1 (other, shinkei_wal)'`;
    await sql`select pg_reload_conf()`;
    try {
      await until(
        "the reload",
        async () => (await sql`show synchronous_standby_names`)[0]!.synchronous_standby_names !== "",
      );
      const refused = await startWalStream({
        sql,
        config: configFor(await tempDir("wal-sync"), { WAL_SLOT: "shinkei_sync" }),
        log: () => {},
      }).catch((e) => e);
      expect(refused).toBeInstanceOf(ShinkeiError);
      expect(refused.message).toContain("synchronous_standby_names names the WAL receiver");
      expect(await slotStatus(sql, "shinkei_sync")).toBeNull();
    } finally {
      await sql`alter system reset synchronous_standby_names`;
      await sql`select pg_reload_conf()`;
      await until(
        "the reset",
        async () => (await sql`show synchronous_standby_names`)[0]!.synchronous_standby_names === "",
      );
    }
  });

  test("without a slot, WAL the server removed while the receiver was down is a reported gap, and streaming resumes", async () => {
    // Inactive slots of earlier tests would keep the WAL this test needs the server to remove.
    await sql`select pg_drop_replication_slot(slot_name) from pg_replication_slots where not active`;
    const dir = await tempDir("wal-noslot");
    const { log, lines } = collector();
    const stream = await startWalStream({
      sql,
      config: configFor(dir, { WAL_SLOT: "none" }),
      log,
      pollMs: 100,
      backoffMs: { min: 200, max: 400 },
    });
    try {
      // Without a slot, only WAL written after the receiver connects is streamed.
      await until(
        "the receiver to stream",
        async () =>
          (
            await sql`select 1 from pg_stat_replication where application_name = ${RECEIVER_APP_NAME} and state = 'streaming'`
          ).length === 1,
      );
      const before = await commitAndArchive(stream, dir, "before-outage");
      // A row in the next segment: the receiver holds the start of it as .partial.
      const { lsn } = (
        await sql<
          { lsn: string }[]
        >`insert into canary values ('in-partial') returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await flushedTo(lsn);
      const pid = stream.receiver.pid()!;
      // Frozen, then killed: it cannot resume before the server has recycled what it was receiving.
      process.kill(pid, "SIGSTOP");
      for (let i = 0; i < 4; i++) {
        await sql`insert into canary values (${`lost-${i}`})`;
        await sql`select pg_switch_wal()`;
        await sql`checkpoint`;
      }
      process.kill(pid, "SIGKILL");
      process.kill(pid, "SIGCONT");
      const reported = await until("the gap to be reported", async () =>
        lines.find((l) => String(l.msg).startsWith("wal gap")),
      );
      const after = await commitAndArchive(stream, dir, "after-outage");
      const records = await listArchive(walRoot(dir));
      const gaps = findGaps(records, segmentBytes);
      expect(gaps.length).toBe(1);
      expect(gaps[0]!.from > before).toBe(true);
      expect(gaps[0]!.to < after).toBe(true);
      // What was received of the interrupted segment is kept, marked partial; the receiver said why it could not resume.
      expect(records.find((r) => r.kind === "partial")?.name).toBe(`${gaps[0]!.from}.partial`);
      expect(lines.some((l) => String(l.msg).startsWith("wal receiver cannot resume"))).toBe(true);
      // The log line named the same hole the archive shows.
      expect({ from: reported.from, to: reported.to }).toEqual({ from: gaps[0]!.from, to: gaps[0]!.to });
      expect(lines.some((l) => l.msg === "wal receiver started" && l.slot === null)).toBe(true);
    } finally {
      await stream.stop();
    }
  });
});

describe("the gap check when the receiver starts", () => {
  const SEG = 16 * 1024 * 1024;
  const lines: Record<string, unknown>[] = [];
  const log: Log = (l) => void lines.push(l);

  test("segments 1-2 held, the receiver starts in segment 5: the gap 3-4 is named", async () => {
    const dir = await tempDir("wal-gapcheck");
    await mkdir(join(dir, "spool"));
    for (const n of [1n, 2n]) await writeFile(join(dir, "spool", segmentName(1, n, SEG)), "");
    lines.length = 0;
    await checkForGap({ root: join(dir, "wal"), spool: join(dir, "spool"), segmentBytes: SEG, log }, "0/5000000", 1);
    expect(lines).toEqual([
      expect.objectContaining({
        level: "error",
        msg: "wal gap: the receiver resumes past WAL it never received",
        from: segmentName(1, 3n, SEG),
        to: segmentName(1, 4n, SEG),
        segments: 2,
      }),
    ]);
  });

  test("a check that cannot tell (the spool is not a folder) is an error line naming where the receiver resumed, not silence", async () => {
    const dir = await tempDir("wal-gapcheck");
    await writeFile(join(dir, "spool"), "not a folder");
    lines.length = 0;
    await checkForGap(
      { root: join(dir, "wal"), spool: join(dir, "spool"), segmentBytes: SEG, slot: "shinkei_x", log },
      "0/5000000",
      1,
    );
    expect(lines.length).toBe(1);
    expect(lines[0]).toMatchObject({
      level: "error",
      timeline: 1,
      resumedAtLsn: "0/5000000",
      resumesAt: segmentName(1, 5n, SEG),
      slot: "shinkei_x",
    });
    expect(String(lines[0]!.msg)).toStartWith("wal gap check failed");
    expect(String(lines[0]!.error)).toContain("ENOTDIR");
  });
});

describe("a slot past max_slot_wal_keep_size", () => {
  test("the server drops WAL a stopped receiver has not taken: the slot is reported lost, the check fails, and the restarted stream names the gap", async () => {
    await sql`alter system set max_slot_wal_keep_size = '2MB'`;
    await sql`select pg_reload_conf()`;
    const dir = await tempDir("wal-lost");
    const config = configFor(dir, { WAL_SLOT: "shinkei_lost", BASE_BACKUP_SCHEDULE: "0 0 1 1 *" });
    const { log, lines } = collector();
    let service = await startWalService({ sql, config, log, slotCheckMs: 100 });
    try {
      await until("the slot to be watched", async () => lines.find((l) => l.msg === "replication slot healthy"));
      // Something received first: with nothing held there is no hole to name, only a start.
      const [{ lsn }] = (await sql<
        { lsn: string }[]
      >`insert into canary values ('received') returning pg_current_wal_insert_lsn()::text as lsn`) as any;
      await until(
        "the receiver to flush it",
        async () =>
          (
            await sql`select 1 from pg_stat_replication where application_name = ${RECEIVER_APP_NAME} and flush_lsn >= ${lsn}::pg_lsn`
          ).length === 1,
      );
      await service.stop();
      // The receiver resumes at most one segment past the newest it holds (sealed, partial, or in the spool).
      const held = [
        ...(await listArchive(walRoot(dir))).map((r) => r.name),
        ...(await readdir(join(dir, "wal", "spool"))),
      ].map((n) => parseSegment(n.replace(/\.partial$/, ""), segmentBytes)?.segno ?? -1n);
      const resume = segmentName(1, held.reduce((a, b) => (b > a ? b : a), -1n) + 1n, segmentBytes);
      // The receiver is down; the server writes more WAL than the slot may keep, and a checkpoint
      // drops it: the slot is lost, and (what the restart meets) the WAL to resume from is gone.
      // "lost" can come before the files go: until then a restart finds them, and nothing is missing.
      await until("the slot to be lost and the WAL to resume from removed", async () => {
        await sql`insert into canary values ('pushing wal')`;
        await sql`select pg_switch_wal()`;
        await sql`checkpoint`;
        const [row] = await sql<
          { oldest: string | null }[]
        >`select min(name) as oldest from pg_ls_waldir() where name ~ '^[0-9A-F]{24}$'`;
        return (
          (await slotStatus(sql, "shinkei_lost"))?.walStatus === "lost" && row!.oldest !== null && row!.oldest > resume
        );
      });
      const problems = pitrProblems(await pitrStatus(sql, config), config.wal.maxLagMs);
      expect(problems.some((p) => p.includes(`replication slot "shinkei_lost" is lost`))).toBe(true);
      const watching = collector();
      const stopWatching = watchSlot({ sql, config, log: watching.log }, 100);
      const risk = await until("the watch to report it", async () =>
        watching.lines.find((l) => l.msg === "replication slot at risk"),
      );
      stopWatching();
      expect(risk).toMatchObject({ level: "error", slot: "shinkei_lost", walStatus: "lost" });
      // PostgreSQL 15 lets a receiver take a lost physical slot up again, from the server's position: the hole is named.
      service = await startWalService({ sql, config, log, slotCheckMs: 100 });
      // Named at the first start that gets past the missing WAL: after a restart's backoff or two.
      const gap = await until(
        "the gap to be named",
        async () => lines.find((l) => String(l.msg).startsWith("wal gap")),
        60_000,
      );
      expect(gap.slot).toBe("shinkei_lost");
      expect(Number(gap.segments)).toBeGreaterThanOrEqual(1);
    } finally {
      await service.stop();
      await sql`alter system reset max_slot_wal_keep_size`;
      await sql`select pg_reload_conf()`;
      await sql`select pg_drop_replication_slot('shinkei_lost')`.catch(() => {});
    }
  });
});

describe("timelines", () => {
  test("a promoted copy moves to timeline 2: its history file and its WAL are archived under 00000002/, the old timeline's last segment kept as partial", async () => {
    const standby = await startStandby(cluster);
    const onStandby = connect(standby.url("shinkei"), { max: 2 });
    const dir = await tempDir("wal-tl");
    const { log, lines } = collector();
    const stream = await startWalStream({
      sql: onStandby,
      config: loadConfig({
        DATABASE_URL: standby.url("shinkei"),
        BACKUP_DIR: dir,
        WAL_ARCHIVE: "stream",
        WAL_SLOT: "shinkei_tl",
      }),
      log,
      pollMs: 100,
    });
    try {
      // Timeline 1, written on the primary and streamed through the standby.
      await commitAndArchive(stream, dir, "on-timeline-1");
      // A last write on timeline 1 that does not end its segment: that segment stays partial for good.
      const { lsn: last } = (
        await sql<
          { lsn: string }[]
        >`insert into canary values ('last-on-1') returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await until(
        "the standby's receiver to flush it",
        async () =>
          (
            await onStandby`select 1 from pg_stat_replication where application_name = ${RECEIVER_APP_NAME} and flush_lsn >= ${last}::pg_lsn`
          ).length === 1,
      );
      await onStandby`select pg_promote(true, 30)`;
      const { lsn } = (
        await onStandby<
          { lsn: string }[]
        >`insert into canary values ('on-timeline-2') returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await onStandby`select pg_switch_wal()`;
      const tl2 = segmentName(2, segnoOf(parseLsn(lsn), segmentBytes), segmentBytes);
      await until("timeline 2 in the archive", async () => {
        await stream.drain();
        const names = (await listArchive(walRoot(dir))).map((r) => r.name);
        return (
          names.includes("00000002.history") &&
          names.includes(tl2) &&
          names.some((n) => n.startsWith("00000001") && n.endsWith(".partial"))
        );
      });
      const records = await listArchive(walRoot(dir));
      const history = records.find((r) => r.name === "00000002.history")!;
      expect(history.kind).toBe("history");
      expect(history.timeline).toBe(2);
      const text = zstdDecompressSync(await readFile(join(walRoot(dir), "00000002", history.file))).toString();
      expect(text).toMatch(/^1\t[0-9A-F]+\/[0-9A-F]+\t/m);
      const segment = records.find((r) => r.name === tl2)!;
      expect(
        zstdDecompressSync(await readFile(join(walRoot(dir), "00000002", segment.file))).includes("on-timeline-2"),
      ).toBe(true);
      // The switch leaves no gap within either timeline.
      expect(findGaps(records, segmentBytes)).toEqual([]);
      expect(lines.some((l) => l.msg === "wal archived" && l.file === "00000002.history")).toBe(true);
    } finally {
      await stream.stop();
      await onStandby.end({ timeout: 1 });
      await standby.stop();
    }
  });
});

describe("retention", () => {
  test("removes the base backups past BACKUP_KEEP_DAYS and exactly the WAL before the oldest kept one's start", async () => {
    const dir = await tempDir("wal-prune");
    const config = configFor(dir, { WAL_SLOT: "shinkei_prune" });
    const stream = await startWalStream({ sql, config, log: () => {}, pollMs: 100 });
    let first: Awaited<ReturnType<typeof createBaseBackup>>;
    let second: Awaited<ReturnType<typeof createBaseBackup>>;
    try {
      first = await createBaseBackup({ sql, url, backupDir: dir, reason: "manual", fast: true });
      for (let i = 0; i < 2; i++) await commitAndArchive(stream, dir, `between-${i}`);
      second = await createBaseBackup({ sql, url, backupDir: dir, reason: "manual", fast: true });
      await commitAndArchive(stream, dir, "after-second");
    } finally {
      await stream.stop();
    }
    // The first base backup is 40 days old as far as retention can tell.
    const path = first.path + ".manifest.json";
    const m = JSON.parse(await readFile(path, "utf8"));
    await Bun.write(path, JSON.stringify({ ...m, startedAt: new Date(Date.now() - 40 * 86_400_000).toISOString() }));

    const keepFrom = BigInt(`0x${second.manifest.startSegment.slice(16)}`);
    const before = (await listArchive(walRoot(dir))).filter((r) => r.kind === "segment");
    const needless = before.filter((r) => BigInt(`0x${r.name.slice(16)}`) < keepFrom).map((r) => r.name);
    expect(needless.length).toBeGreaterThanOrEqual(2);

    const dry = await pruneWalLocal(config, { dryRun: true });
    expect(dry.bases.map((d) => [d.name, d.keep])).toEqual([
      [second.manifest.file, true],
      [first.manifest.file, false],
    ]);
    expect(dry.wal).toEqual({ from: needless[0]!, to: needless.at(-1)!, files: needless.length });
    expect(dry.walWhy).toContain(second.manifest.startSegment);
    expect(dry.removed).toEqual([]);

    const cli = await shinkei(["backup", "prune", "--dry-run"], {
      DATABASE_URL: url,
      BACKUP_DIR: dir,
      WAL_ARCHIVE: "stream",
    });
    expect(cli).toSucceed();
    expect(cli.stdout).toContain(`WAL ${needless[0]} .. ${needless.at(-1)} (${needless.length} file(s)): would delete`);
    expect((await listArchive(walRoot(dir))).filter((r) => r.kind === "segment").length).toBe(before.length);

    const done = await pruneWalLocal(config, { dryRun: false });
    expect(done.removed).toEqual([first.manifest.file, ...needless]);
    const after = (await listArchive(walRoot(dir))).filter((r) => r.kind === "segment").map((r) => r.name);
    expect(after).toEqual(before.map((r) => r.name).filter((n) => !needless.includes(n)));
    expect(after[0]).toBe(second.manifest.startSegment);
    expect(await readdir(join(dir, "base"))).not.toContain(first.manifest.file);
    expect(findGaps(await listArchive(walRoot(dir)), segmentBytes)).toEqual([]);
  });
});

describe("scheduled base backups", () => {
  test("two services on one database take one base backup per scheduled time between them, and it is verified", async () => {
    const dir = await tempDir("wal-sched");
    // A spread checkpoint paces its writes over minutes, as it should on a live server: not here.
    const config = configFor(dir, { BASE_BACKUP_START_FAST: "true" });
    const a = collector();
    const b = collector();
    const slot = new Date(Math.floor(Date.now() / 1000) * 1000);
    await Promise.all([
      scheduledBaseBackup({ sql, config, log: a.log }, slot),
      scheduledBaseBackup({ sql, config, log: b.log }, slot),
    ]);
    const all = [...a.lines, ...b.lines];
    expect(all.filter((l) => l.msg === "base backup finished").length).toBe(1);
    expect(all.filter((l) => l.msg === "base backup skipped: another process took this run").length).toBe(1);
    expect(all.find((l) => l.msg === "base backup verified")).toBeDefined();
    expect((await readdir(join(dir, "base"))).filter((n) => n.endsWith(".tar.zst")).length).toBe(1);
    const [run] =
      await sql`select file, error, finished_at from backup_runs where scheduled_for = ${slot} and kind = 'base'`;
    expect(run!.file).toMatch(/^shinkei_base_/);
    expect(run!.error).toBeNull();
  });
});

function unzstdSafe(bytes: Buffer): Buffer | null {
  try {
    return zstdDecompressSync(bytes);
  } catch {
    return null;
  }
}
