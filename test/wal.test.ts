import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { zstdDecompressSync } from "node:zlib";
import { startCluster, startStandby, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { collector, receiverFlushed, receiverStreaming } from "./support/wal.ts";
import { connect, ensureDatabase, type Sql } from "../src/pg/db.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { loadConfig } from "../src/config/index.ts";
import type { Log } from "../src/log.ts";
import { ShinkeiError } from "../src/errors.ts";
import { decrypt, writeIdentity } from "../src/storage/crypt.ts";
import { checkForGap, startWalStream, type WalStream } from "../src/wal/stream.ts";
import { serverInfo } from "../src/pg/server-info.ts";
import { ensureSlot, slotStatus } from "../src/wal/slot.ts";
import { archiveWalFile, listArchive, walRoot } from "../src/wal/archive.ts";
import { fetchWal } from "../src/wal/fetch.ts";
import { setAsideUnsigned, SpoolSigner } from "../src/wal/spoolsign.ts";
import { archiveTrust, copySpoolFile, signedPart, type Untrusted } from "../src/wal/trust.ts";
import { findGaps } from "../src/wal/gaps.ts";
import { createBaseBackup } from "../src/wal/base.ts";
import { pruneWalLocal } from "../src/wal/prune.ts";
import { scheduledBaseBackup, watchSlot } from "../src/wal/service.ts";
import { startWalService } from "../src/service/backup-service.ts";
import { pitrProblems, pitrStatus } from "../src/wal/status.ts";
import { shinkei } from "./support/cli.ts";
import { parseLsn, parseSegment, segmentName, segmentStart, segnoOf } from "../src/wal/segments.ts";

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

/** Write a row, end its segment, and wait until that segment is in the archive; its name. */
async function commitAndArchive(stream: WalStream, dir: string, value: string): Promise<string> {
  // The row starts a segment of its own: written at the end of one, it could end exactly at the
  // boundary, and the insert position it returns would name the next segment, without the row.
  await sql`select pg_switch_wal()`;
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
  test("streams every commit: the receiver's durable position reaches it, the segment archived, recorded", async () => {
    const dir = await tempDir("wal");
    const { log, lines } = collector();
    const stream = await startWalStream({ sql, config: configFor(dir), log, pollMs: 100 });
    try {
      const { lsn } = (
        await sql<
          { lsn: string }[]
        >`insert into canary values ('streamed-row-7781') returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await receiverFlushed(sql, lsn);
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

  test("spool signed as received: a killed receiver, a new service, every segment signed, no gap", async () => {
    const dir = await tempDir("wal-signed");
    const config = configFor(dir, {
      WAL_SLOT: "shinkei_signed",
      BACKUP_MANIFEST_KEY: "a manifest key of the wal tests, long enough",
    });
    const { log, lines } = collector();
    const start = () => startWalStream({ sql, config, log, pollMs: 100, backoffMs: { min: 300, max: 1000 } });
    // A history file planted in the spool: it names a timeline the receiver never streamed.
    const planted = "00000005.history";
    await mkdir(join(dir, "wal", "spool"), { recursive: true });
    await writeFile(join(dir, "wal", "spool", planted), "1\t0/1000000\tno recovery target specified\n");
    let stream = await start();
    try {
      const first = await commitAndArchive(stream, dir, "signed-1");
      const pid = stream.receiver.pid()!;
      process.kill(pid, "SIGKILL");
      await until("a restart", async () => stream.receiver.pid() !== undefined && stream.receiver.pid() !== pid);
      await commitAndArchive(stream, dir, "signed-2");
      // A write that stays in the partial; then a new service takes the partial up from its signature.
      const { lsn } = (
        await sql<
          { lsn: string }[]
        >`insert into canary values ('signed-3') returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await receiverFlushed(sql, lsn);
      await stream.drain();
      await stream.stop();
      stream = await start();
      const last = await commitAndArchive(stream, dir, "signed-4");
      const untrusted: Untrusted[] = [];
      const records = await listArchive(walRoot(dir), undefined, archiveTrust(config.backup.age), untrusted);
      expect(untrusted).toEqual([]);
      expect(records.every((r) => typeof r.signature === "string")).toBe(true);
      const names = records.map((r) => r.name);
      expect(names[0]! <= first).toBe(true);
      expect(names).toContain(last);
      expect(findGaps(records, segmentBytes)).toEqual([]);
      const segnos = records.map((r) => BigInt(`0x${r.name.slice(16)}`));
      expect(Number(segnos.at(-1)! - segnos[0]!) + 1).toBe(records.length);
      // The segment that held 'signed-3' was sealed by the new service, whole.
      expect(records.some((r) => r.name === segmentName(1, segnoOf(parseLsn(lsn), segmentBytes), segmentBytes))).toBe(
        true,
      );
      const refused = lines.filter(
        (l) =>
          l.file !== planted &&
          /not signed|archiving failed|signing the wal spool|no longer matches|does not match/.test(
            `${l.msg} ${l.error ?? ""}`,
          ),
      );
      expect(refused).toEqual([]);
      // The planted history was neither sealed nor taken for a timeline switch: it is named, and still there.
      expect(names).not.toContain(planted);
      expect(records.every((r) => r.timeline === 1)).toBe(true);
      expect(lines.some((l) => l.file === planted && String(l.msg).includes("did not announce"))).toBe(true);
      expect(await readdir(join(dir, "wal", "spool"))).toContain(planted);
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

  test("without a slot, WAL removed while the receiver was down is a reported gap, and streaming resumes", async () => {
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
      await receiverStreaming(sql);
      const before = await commitAndArchive(stream, dir, "before-outage");
      // A row in the next segment: the receiver holds the start of it as .partial.
      const { lsn } = (
        await sql<
          { lsn: string }[]
        >`insert into canary values ('in-partial') returning pg_current_wal_insert_lsn()::text as lsn`
      )[0]!;
      await receiverFlushed(sql, lsn);
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
      // What was received of the interrupted segment is kept, marked partial; the receiver said why
      // it could not resume.
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

  test("a check that cannot tell (the spool is no folder) is an error naming where the receiver resumed", async () => {
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
  test("WAL a stopped receiver did not take is dropped: slot lost, check fails, the stream names the gap", async () => {
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
      await receiverFlushed(sql, lsn);
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
      // PostgreSQL 15 lets a receiver take a lost physical slot up again, from the server's
      // position: the hole is named.
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
  test("a promoted copy goes to timeline 2: history and WAL in 00000002/, the old last segment a partial", async () => {
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
        // Signed as received: the receiver's switch to timeline 2 is followed by the spool's signer.
        BACKUP_MANIFEST_KEY: "a manifest key of the wal tests, long enough",
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
      await receiverFlushed(onStandby, last);
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
      expect(records.every((r) => typeof r.signature === "string")).toBe(true);
      expect(
        lines.filter((l) => /not signed|archiving failed|signing the wal spool/.test(`${l.msg} ${l.error ?? ""}`)),
      ).toEqual([]);
    } finally {
      await stream.stop();
      await onStandby.end({ timeout: 1 });
      await standby.stop();
    }
  });
});

/**
 * The spool's signer on files shaped as pg_receivewal leaves them (1 MiB segments of 8 KiB pages,
 * each page's header non-zero, zeros where nothing was written yet), without a server: what it
 * signs, what it refuses to, and what fetch then serves of each.
 */
describe("spool signatures", () => {
  const KEY = "a manifest key of the spool tests, long enough";
  const SEG = 1 << 20;
  const PAGE = 8192;
  const X = segmentName(1, 1n, SEG);
  /** Page `i` of a made-up stream: a header (magic, and the page size in the first page's long header), then bytes. */
  const pageOf = (i: number, fill = 0x41 + (i % 20)) => {
    const p = Buffer.alloc(PAGE, fill);
    p.writeUInt16LE(0xd110, 0);
    if (i === 0) p.writeUInt32LE(PAGE, 36);
    return p;
  };
  async function setup() {
    const backupDir = await tempDir("spool-sign");
    const spool = join(backupDir, "wal", "spool");
    await mkdir(spool, { recursive: true });
    const { log, lines } = collector();
    // What the server says the receiver has written: the signer signs no further.
    let at: bigint | null = null;
    const signer = () =>
      new SpoolSigner({ backupDir, spool, key: KEY, segmentBytes: SEG, log, position: async () => at });
    /** The receiver has written `bytes` of segment `segno` (of timeline 1's numbering). */
    const reach = (segno: bigint | null, bytes = 0) => {
      at = segno === null ? null : segmentStart(segno, SEG) + BigInt(bytes);
    };
    /** The first `pages` pages written and `extra` bytes of the next, zeros to the segment's size. */
    const write = async (name: string, pages: number, extra = 0) => {
      const b = Buffer.alloc(SEG);
      for (let i = 0; i < pages; i++) pageOf(i).copy(b, i * PAGE);
      if (extra)
        pageOf(pages)
          .subarray(0, extra)
          .copy(b, pages * PAGE);
      await writeFile(join(spool, name), b);
    };
    const fetch = async (name: string) => {
      const out = join(backupDir, `out-${crypto.randomUUID()}`);
      await copySpoolFile(backupDir, name, join(spool, name), out, KEY);
      return readFile(out);
    };
    return { backupDir, spool, log, lines, signer, write, fetch, reach };
  }

  test("the streamed segment is signed and served to its last byte; another name is not", async () => {
    const { spool, lines, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1); // the receiver's "starting log streaming at 0/100000 (timeline 1)"
    await write(`${X}.partial`, 4, 100);
    reach(1n, 4 * PAGE + 100);
    const planted = segmentName(1, 7n, SEG);
    await write(`${planted}.partial`, 4);
    await write(segmentName(1, 8n, SEG), 128);
    for (let i = 0; i < 3; i++) await s.pass();
    const served = await fetch(`${X}.partial`);
    expect(served.length).toBe(SEG);
    expect(served.equals(await readFile(join(spool, `${X}.partial`)))).toBe(true);
    for (const name of [`${planted}.partial`, segmentName(1, 8n, SEG)])
      await expect(fetch(name)).rejects.toThrow(/in the spool is not signed, and BACKUP_MANIFEST_KEY is set/);
    expect(lines).toEqual([]);
    // Named once the server says the receiver wrote past them, and they never came next in its stream.
    reach(9n, 0);
    for (let i = 0; i < 3; i++) await s.pass();
    expect(lines.filter((l) => String(l.msg).includes("not signed (planted?)")).map((l) => l.file)).toEqual([
      segmentName(1, 8n, SEG),
      planted,
    ]);
  });

  test("wal-fetch: a partial not signed yet ends the archive; one changed after signing is refused", async () => {
    const { backupDir, spool, signer, write, reach } = await setup();
    const config = loadConfig({ DATABASE_URL: url, BACKUP_DIR: backupDir, BACKUP_MANIFEST_KEY: KEY });
    const target = join(backupDir, "fetched");
    await write(`${X}.partial`, 4);
    // Not signed yet (the first moment of a segment, or a primary gone before the signer's pass):
    // recovery is told "no such file" (exit 1) and ends before it, rather than abort (exit 126).
    const unsigned = await fetchWal(config, X, target).catch((e: ShinkeiError) => e);
    expect(unsigned).toBeInstanceOf(ShinkeiError);
    expect((unsigned as ShinkeiError).code).toBe("NOT_FOUND");
    expect(await Bun.file(target).exists()).toBe(false);
    // Signed as far as the receiver wrote: served.
    const s = signer();
    s.expect("0/100000", 1);
    reach(1n, 4 * PAGE);
    await s.pass();
    expect((await fetchWal(config, X, target)).from).toBe("receiving");
    // A signed byte changed afterwards: refused, named, nothing written.
    await rm(target);
    const b = await readFile(join(spool, `${X}.partial`));
    b.writeUInt8(b.readUInt8(PAGE + 100) ^ 0xff, PAGE + 100);
    await writeFile(join(spool, `${X}.partial`), b);
    const changed = await fetchWal(config, X, target).catch((e: ShinkeiError) => e);
    expect((changed as ShinkeiError).code).toBe("ARCHIVE_UNTRUSTED");
    expect(await Bun.file(target).exists()).toBe(false);
  });

  test("bytes after a pass wait for the next; a finished segment is signed whole", async () => {
    const { spool, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    await write(`${X}.partial`, 2, 10);
    reach(1n, 2 * PAGE + 10);
    await s.pass();
    await write(`${X}.partial`, 5, 10); // written since the pass
    const served = await fetch(`${X}.partial`);
    expect(
      served
        .subarray(0, 2 * PAGE + 10)
        .equals((await readFile(join(spool, `${X}.partial`))).subarray(0, 2 * PAGE + 10)),
    ).toBe(true);
    expect(served.subarray(2 * PAGE + 10).every((b) => b === 0)).toBe(true);
    reach(1n, 5 * PAGE + 10);
    await s.pass();
    expect((await fetch(`${X}.partial`)).equals(await readFile(join(spool, `${X}.partial`)))).toBe(true);
    // pg_receivewal finishes it: the rest written, renamed.
    await write(`${X}.partial`, 128);
    await rename(join(spool, `${X}.partial`), join(spool, X));
    const next = segmentName(1, 2n, SEG);
    await write(`${next}.partial`, 1, 50);
    reach(2n, PAGE + 50);
    await s.pass();
    expect((await fetch(X)).equals(await readFile(join(spool, X)))).toBe(true);
    expect(
      (await fetch(`${next}.partial`))
        .subarray(0, PAGE + 50)
        .equals((await readFile(join(spool, `${next}.partial`))).subarray(0, PAGE + 50)),
    ).toBe(true);
  });

  test("a signed file changed in place: refused by fetch and archiver, signed no further", async () => {
    const { backupDir, spool, lines, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    await write(`${X}.partial`, 6);
    reach(1n, 6 * PAGE);
    await s.pass();
    // One byte of a signed page changed, as someone who can write the spool would.
    const path = join(spool, `${X}.partial`);
    const bytes = await readFile(path);
    bytes.writeUInt8(bytes.readUInt8(PAGE + 100) ^ 0xff, PAGE + 100);
    await writeFile(path, bytes);
    await expect(fetch(`${X}.partial`)).rejects.toThrow(/was changed after the WAL receiver signed it/);
    const restarted = signer();
    await restarted.pass();
    expect(lines.some((l) => String(l.msg).includes("no longer matches what was signed of it"))).toBe(true);
    await expect(fetch(`${X}.partial`)).rejects.toThrow(/was changed after the WAL receiver signed it/);
    // Finished: swapped for other bytes than were signed, it is not signed whole, and not sealed.
    await write(`${X}.partial`, 6);
    const again = signer();
    again.expect("0/100000", 1);
    await again.pass();
    const swapped = Buffer.alloc(SEG);
    for (let i = 0; i < 128; i++) pageOf(i, i === 2 ? 0x7a : undefined).copy(swapped, i * PAGE);
    await writeFile(join(spool, X), swapped);
    await rm(path);
    reach(2n, 0);
    await again.pass();
    expect(lines.some((l) => l.file === X && String(l.msg).includes("signed bytes were rewritten"))).toBe(true);
    await expect(fetch(X)).rejects.toThrow(/was changed after the WAL receiver signed it/);
    await expect(signedPart(backupDir, X, KEY)).rejects.toThrow(/is not signed/);
  });

  test("before the receiver starts, an unsigned or changed partial is set aside", async () => {
    const { backupDir, spool, log, lines, signer, write, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    await write(`${X}.partial`, 3, 5);
    reach(1n, 3 * PAGE + 5);
    await s.pass();
    await write(`${X}.partial`, 4); // the receiver wrote on after the pass: still what was signed, and more
    const planted = segmentName(1, 9n, SEG);
    await write(`${planted}.partial`, 2); // left while the service was down: the receiver would resume from it
    expect(await setAsideUnsigned(backupDir, spool, KEY, log)).toEqual([
      expect.stringMatching(new RegExp(`^${planted}\\.partial\\.unsigned-\\d+$`)),
    ]);
    expect((await readdir(spool)).sort()).toEqual([`${X}.partial`, expect.stringMatching(/unsigned/)].sort());
    // Changed under its signature: set aside too.
    const path = join(spool, `${X}.partial`);
    const bytes = await readFile(path);
    bytes.writeUInt8(bytes.readUInt8(100) ^ 0xff, 100);
    await writeFile(path, bytes);
    expect(await setAsideUnsigned(backupDir, spool, KEY, log)).toHaveLength(1);
    expect(await readdir(spool)).not.toContain(`${X}.partial`);
    expect(lines.some((l) => String(l.msg).includes("that the WAL service did not sign: set aside"))).toBe(true);
  });

  test("after a restart the signer resumes the partial from its signature", async () => {
    const { backupDir, spool, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    await write(`${X}.partial`, 3, 7);
    reach(1n, 3 * PAGE + 7);
    await s.pass();
    // A new service: its receiver resumes from this partial (from the start of its segment).
    const restarted = signer();
    restarted.expect("0/100000", 1);
    await write(`${X}.partial`, 9, 3);
    reach(1n, 9 * PAGE + 3);
    await restarted.pass();
    expect((await fetch(`${X}.partial`)).equals(await readFile(join(spool, `${X}.partial`)))).toBe(true);
    await write(`${X}.partial`, 128);
    await rename(join(spool, `${X}.partial`), join(spool, X));
    reach(2n, 0);
    await restarted.pass();
    expect((await fetch(X)).equals(await readFile(join(spool, X)))).toBe(true);
    // The archiver seals it: the signed bytes are the sealed ones.
    const { record } = await archiveWalFile(join(spool, X), join(backupDir, "wal"), {
      segmentBytes: SEG,
      signed: await signedPart(backupDir, X, KEY),
    });
    expect(record.originalSha256).toBe(
      new Bun.CryptoHasher("sha256").update(await readFile(join(spool, X))).digest("hex"),
    );
  });
  test("bytes past the receiver's position are neither signed, served nor sealed", async () => {
    const { backupDir, spool, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    // The receiver wrote 2 pages and 10 bytes; the rest of that page and two more pages were added by someone else.
    await write(`${X}.partial`, 4);
    reach(1n, 2 * PAGE + 10);
    await s.pass();
    await s.pass();
    const file = await readFile(join(spool, `${X}.partial`));
    const served = await fetch(`${X}.partial`);
    expect(served.subarray(0, 2 * PAGE + 10).equals(file.subarray(0, 2 * PAGE + 10))).toBe(true);
    expect(served.subarray(2 * PAGE + 10).every((b) => b === 0)).toBe(true);
    // Sealed (as an old timeline's last segment would be): the same bytes as served, zeros after.
    const { record } = await archiveWalFile(join(spool, `${X}.partial`), join(backupDir, "wal"), {
      segmentBytes: SEG,
      signed: await signedPart(backupDir, `${X}.partial`, KEY),
    });
    expect(record.originalSha256).toBe(new Bun.CryptoHasher("sha256").update(served).digest("hex"));
    // Unknown position (the receiver is not connected): nothing more is signed.
    reach(null);
    const blind = signer();
    blind.expect("0/100000", 1);
    await blind.pass();
    expect((await fetch(`${X}.partial`)).equals(served)).toBe(true);
  });

  test("signed bytes of the page being received rewritten, the page extended: refused, naming the file", async () => {
    const { spool, lines, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    await write(`${X}.partial`, 2, 100);
    reach(1n, 2 * PAGE + 100);
    await s.pass();
    const signed = await fetch(`${X}.partial`);
    // A signed byte of the begun page changed, and the page written on (the receiver's position moves too).
    const path = join(spool, `${X}.partial`);
    const bytes = await readFile(path);
    pageOf(2).copy(bytes, 2 * PAGE);
    pageOf(3).copy(bytes, 3 * PAGE);
    bytes.writeUInt8(0x00, 2 * PAGE + 50);
    await writeFile(path, bytes);
    reach(1n, 4 * PAGE);
    await s.pass();
    expect(lines.filter((l) => String(l.msg).includes("signed bytes were rewritten")).map((l) => l.file)).toEqual([X]);
    // Not signed further, and what was signed no longer matches: recovery gets none of it.
    await expect(fetch(`${X}.partial`)).rejects.toThrow(
      new RegExp(`${X}\\.partial in the spool was changed after the WAL receiver signed it`),
    );
    await s.pass();
    expect(signed.length).toBe(SEG);
    await expect(fetch(`${X}.partial`)).rejects.toThrow(/was changed after the WAL receiver signed it/);
  });

  test("a partial renamed to its finished name, pages added: not signed, refused by fetch and archiver", async () => {
    const { backupDir, spool, lines, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    await write(`${X}.partial`, 3);
    reach(1n, 3 * PAGE);
    await s.pass();
    // The rest of the segment made up, and the file given its finished name while the receiver is in page 3.
    const made = Buffer.alloc(SEG);
    for (let i = 0; i < 128; i++) pageOf(i, i < 3 ? undefined : 0x7a).copy(made, i * PAGE);
    await writeFile(join(spool, X), made);
    await rm(join(spool, `${X}.partial`));
    reach(1n, 3 * PAGE + 500);
    for (let i = 0; i < 3; i++) await s.pass();
    // Served only as far as it was signed as the partial; not sealed.
    const served = await fetch(X);
    expect(served.subarray(0, 3 * PAGE).equals(made.subarray(0, 3 * PAGE))).toBe(true);
    expect(served.subarray(3 * PAGE).every((b) => b === 0)).toBe(true);
    await expect(signedPart(backupDir, X, KEY)).rejects.toThrow(/is not signed.*it is not archived/);
    // The next segment planted whole before the receiver gets there: signed only as the receiver writes it.
    const next = segmentName(1, 2n, SEG);
    await write(X, 128);
    await write(`${next}.partial`, 128);
    reach(2n, 0);
    await s.pass();
    expect((await fetch(X)).equals(await readFile(join(spool, X)))).toBe(true);
    expect((await fetch(`${next}.partial`)).every((b) => b === 0)).toBe(true);
    reach(2n, PAGE);
    await s.pass();
    expect((await fetch(`${next}.partial`)).subarray(PAGE).every((b) => b === 0)).toBe(true);
    expect(lines.filter((l) => l.level === "error")).toEqual([]);
  });

  test("a timeline history file: signed only for the timeline the receiver switched to", async () => {
    const { backupDir, spool, lines, signer, write, fetch, reach } = await setup();
    const s = signer();
    s.expect("0/100000", 1);
    await write(`${X}.partial`, 3);
    reach(1n, 3 * PAGE);
    const planted = "00000005.history";
    await writeFile(join(spool, planted), "1\t0/106000\tno recovery target specified\n");
    for (let i = 0; i < 3; i++) await s.pass();
    expect(s.timeline).toBe(1);
    await expect(signedPart(backupDir, planted, KEY)).rejects.toThrow(/timeline history file 00000005.history/);
    expect(lines.some((l) => l.file === planted && String(l.msg).includes("did not announce"))).toBe(true);
    // The receiver switches to timeline 2 at 0/10C000: its history (parent 1) is signed; timeline 1 ends there.
    s.expect("0/10C000", 2);
    await writeFile(join(spool, "00000002.history"), "1\t0/10C000\tno recovery target specified\n");
    await write(`${X}.partial`, 8);
    reach(1n, 8 * PAGE);
    await s.pass();
    expect((await signedPart(backupDir, "00000002.history", KEY)).whole).toBe(true);
    expect(s.timeline).toBe(2);
    const served = await fetch(`${X}.partial`);
    expect(served.subarray(6 * PAGE).every((b) => b === 0)).toBe(true);
    expect(
      served.subarray(0, 6 * PAGE).equals((await readFile(join(spool, `${X}.partial`))).subarray(0, 6 * PAGE)),
    ).toBe(true);
    await expect(signedPart(backupDir, planted, KEY)).rejects.toThrow(/not signed/);
  });
});

describe("retention", () => {
  test("removes base backups past BACKUP_KEEP_DAYS and exactly the WAL before the oldest kept one starts", async () => {
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
  test("two services on one database take one base backup per scheduled time between them, verified", async () => {
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
