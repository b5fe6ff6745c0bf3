import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { mkdir, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { zstdDecompressSync } from "node:zlib";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { canMountTmpfs, mountTmpfs, tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { collector, receiverFlushed, receiverStreaming } from "./support/wal.ts";
import { archiveTrust } from "../src/wal/trust.ts";
import { connect, ensureDatabase, type Sql } from "../src/pg/db.ts";
import { loadConfig } from "../src/config/index.ts";
import { startWalStream, type WalStream } from "../src/wal/stream.ts";
import { serverInfo } from "../src/pg/server-info.ts";
import { slotStatus } from "../src/wal/slot.ts";
import { listArchive, walRoot } from "../src/wal/archive.ts";
import { findGaps } from "../src/wal/gaps.ts";
import { archiveWindow, pitrProblems, pitrStatus } from "../src/wal/status.ts";
import { freeBytes, repairSpool } from "../src/wal/spool.ts";
import {
  formatLsn,
  parseLsn,
  parseSegment,
  segmentName,
  segmentStart,
  segnoOf,
  timelineDir,
} from "../src/wal/segments.ts";

// Faults in the receiver's own files: a cluster of our own and real pg_receivewal.
setDefaultTimeout(120_000);

let cluster: TestCluster;
let sql: Sql;
let url: string;
let segmentBytes: number;

beforeAll(async () => {
  // 16 MiB segments, as PostgreSQL writes by default: with 1 MiB ones, sealing a segment frees a
  // whole one on the small disk the full-disk test fills, and "full" flickers.
  cluster = await startCluster({ walSegmentMiB: 16 });
  url = cluster.url("shinkei");
  await ensureDatabase(url);
  sql = connect(url, { max: 4 });
  await sql`create table canary (v text)`;
  segmentBytes = (await serverInfo(sql)).segmentBytes;
});
afterAll(async () => {
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
});

const configFor = (dir: string, extra: Record<string, string> = {}) =>
  loadConfig({ DATABASE_URL: url, BACKUP_DIR: dir, WAL_ARCHIVE: "stream", ...extra });
const timeline = async () =>
  (await sql<{ tl: number }[]>`select timeline_id as tl from pg_control_checkpoint()`)[0]!.tl;

/** Write a row and flush it to the receiver; the segment it went into. */
async function commitFlushed(value: string): Promise<string> {
  // A segment of its own, so the insert position names the segment that holds the row (see wal.test).
  await sql`select pg_switch_wal()`;
  const { lsn } = (
    await sql<
      { lsn: string }[]
    >`insert into canary values (${value}) returning pg_current_wal_insert_lsn()::text as lsn`
  )[0]!;
  await receiverFlushed(sql, lsn);
  return segmentName(await timeline(), segnoOf(parseLsn(lsn), segmentBytes), segmentBytes);
}

/** End the current segment and wait until `name` is archived; its WAL, uncompressed. */
async function archivedWal(stream: WalStream, dir: string, name: string): Promise<Buffer> {
  await sql`select pg_switch_wal()`;
  const r = await until(`${name} in the archive`, async () => {
    await stream.drain();
    return (await listArchive(walRoot(dir))).find((x) => x.name === name);
  });
  return zstdDecompressSync(await readFile(join(walRoot(dir), timelineDir(r.timeline), r.file)));
}

const spoolOf = (dir: string) => join(dir, "wal", "spool");

describe("a .partial pg_receivewal refuses", () => {
  test("zeros only: removed (no WAL in it), the segment comes again from the slot's position, none lost", async () => {
    const dir = await tempDir("wal-zeros");
    const config = configFor(dir, { WAL_SLOT: "shinkei_zeros" });
    const { log, lines } = collector();
    let stream = await startWalStream({ sql, config, log, pollMs: 100, backoffMs: { min: 200, max: 400 } });
    let seg: string;
    try {
      seg = await commitFlushed("in-the-zeroed-segment");
    } finally {
      await stream.stop();
    }
    // What a full disk leaves while pg_receivewal pads the segment: zeros, short of a whole one.
    // The slot resumes at the start of the segment holding its restart position: this one.
    const slot = await slotStatus(sql, "shinkei_zeros");
    expect(segmentName(await timeline(), segnoOf(parseLsn(slot!.restartLsn!), segmentBytes), segmentBytes)).toBe(seg);
    for (const n of await readdir(spoolOf(dir))) await rm(join(spoolOf(dir), n));
    await writeFile(join(spoolOf(dir), `${seg}.partial`), Buffer.alloc(991_232));
    // `backup check` sees the refused file before anything repairs it.
    expect((await archiveWindow(dir, archiveTrust(undefined), segmentBytes)).spool.refused).toEqual([
      { name: `${seg}.partial`, sizeBytes: 991_232 },
    ]);

    stream = await startWalStream({ sql, config, log, pollMs: 100, backoffMs: { min: 200, max: 400 } });
    try {
      await commitFlushed("after-the-repair");
      const wal = await archivedWal(stream, dir, seg);
      expect(wal.includes("in-the-zeroed-segment")).toBe(true);
      expect(findGaps(await listArchive(walRoot(dir)), segmentBytes)).toEqual([]);
      expect(
        lines.some(
          (l) =>
            l.msg === String(l.msg) && String(l.msg).startsWith("wal partial removed") && l.file === `${seg}.partial`,
        ),
      ).toBe(true);
      expect(lines.some((l) => /should be 0 or/.test(String(l.detail)))).toBe(false);
    } finally {
      await stream.stop();
      await sql`select pg_drop_replication_slot('shinkei_zeros')`.catch(() => {});
    }
  });

  test("short but holding WAL: padded, never deleted; the server sends the segment again over its bytes", async () => {
    const dir = await tempDir("wal-short");
    const config = configFor(dir, { WAL_SLOT: "shinkei_short" });
    const { log, lines } = collector();
    let stream = await startWalStream({ sql, config, log, pollMs: 100, backoffMs: { min: 200, max: 400 } });
    let seg: string;
    try {
      seg = await commitFlushed("in-the-cut-segment");
    } finally {
      await stream.stop();
    }
    const path = join(spoolOf(dir), `${seg}.partial`);
    await truncate(path, 65_536);
    const head = await readFile(path);
    expect(head.some((b) => b !== 0)).toBe(true);

    // The repair alone: the received bytes stay where they were, the file becomes one pg_receivewal accepts.
    const repaired = await repairSpool(spoolOf(dir), segmentBytes, log);
    expect(repaired).toEqual([{ name: `${seg}.partial`, sizeBytes: 65_536 }]);
    expect((await stat(path)).size).toBe(segmentBytes);
    expect((await readFile(path)).subarray(0, 65_536).equals(head)).toBe(true);
    // Cut again, for the stream to meet it as it would.
    await truncate(path, 65_536);

    stream = await startWalStream({ sql, config, log, pollMs: 100, backoffMs: { min: 200, max: 400 } });
    try {
      await commitFlushed("after-the-padding");
      const wal = await archivedWal(stream, dir, seg);
      // Every byte received before is in the segment as the server sent it again (the zeros after
      // the last flush are where the rest of the segment went).
      expect(head.every((b, i) => b === 0 || wal[i] === b)).toBe(true);
      expect(wal.includes("in-the-cut-segment")).toBe(true);
      expect(findGaps(await listArchive(walRoot(dir)), segmentBytes)).toEqual([]);
      expect(lines.filter((l) => String(l.msg).startsWith("wal partial padded")).length).toBe(2);
      expect(lines.some((l) => /should be 0 or/.test(String(l.detail)))).toBe(false);
    } finally {
      await stream.stop();
      await sql`select pg_drop_replication_slot('shinkei_short')`.catch(() => {});
    }
  });

  test("the server removed the WAL to resume from: an empty .partial is not archived inside the gap", async () => {
    await sql`select pg_drop_replication_slot(slot_name) from pg_replication_slots where not active`;
    const dir = await tempDir("wal-empty");
    const config = configFor(dir, { WAL_SLOT: "none" });
    const { log, lines } = collector();
    let stream = await startWalStream({ sql, config, log, pollMs: 100, backoffMs: { min: 200, max: 400 } });
    let seg: string;
    try {
      await receiverStreaming(sql);
      seg = await commitFlushed("before-the-hole");
    } finally {
      await stream.stop();
    }
    // An empty .partial (pg_receivewal accepts one) for the segment to resume from, which the server then recycles.
    for (const n of await readdir(spoolOf(dir))) await rm(join(spoolOf(dir), n));
    await writeFile(join(spoolOf(dir), `${seg}.partial`), "");
    for (let i = 0; i < 4; i++) {
      await sql`insert into canary values (${`lost-${i}`})`;
      await sql`select pg_switch_wal()`;
      await sql`checkpoint`;
    }
    stream = await startWalStream({ sql, config, log, pollMs: 100, backoffMs: { min: 200, max: 400 } });
    try {
      await until("the receiver to give up on the removed WAL", async () =>
        lines.find((l) => String(l.msg).startsWith("wal receiver cannot resume")),
      );
      await receiverStreaming(sql, "the receiver to stream again");
      const records = await listArchive(walRoot(dir));
      expect(records.filter((r) => r.kind === "partial")).toEqual([]);
      expect(
        lines.some((l) => l.msg === "wal partial without WAL removed, not archived" && l.file === `${seg}.partial`),
      ).toBe(true);
    } finally {
      await stream.stop();
    }
  });
});

const canMount = await canMountTmpfs();
if (!canMount)
  console.warn(
    "wal-faults: mounting a tmpfs is not permitted here: the real full-disk test is skipped (the .partial " +
      "tests above write the files a full disk leaves)",
  );

describe("a real full disk (a 64 MiB tmpfs)", () => {
  test.skipIf(!canMount)(
    "room for one segment, not two: the receiver resumes after the archived WAL, not from the slot's older position",
    async () => {
      const dir = await tempDir("wal-room");
      expect(await mountTmpfs(dir, "64m")).toBe(true);
      const config = configFor(dir, { WAL_SLOT: "shinkei_room" });
      let stream: WalStream | undefined;
      try {
        await mkdir(join(dir, "wal"), { recursive: true });
        stream = await startWalStream({ sql, config, log: () => {}, pollMs: 100, backoffMs: { min: 200, max: 400 } });
        const seg = await commitFlushed("in-the-archived-segment");
        // Where a receiver that stopped as the segment ended left its slot: inside the segment (its
        // flush at the end was never reported). A copy keeps it there; the receiver's own moves on.
        await sql`select pg_copy_physical_replication_slot('shinkei_room', 'shinkei_room_behind')`;
        await archivedWal(stream, dir, seg);
        await stream.stop();
        stream = undefined;
        await sql`select pg_drop_replication_slot('shinkei_room')`;
        // The spool as a full disk leaves it: the next segment's padding, cut short (the repair removes it).
        const next = segmentName(await timeline(), parseSegment(seg, segmentBytes)!.segno + 1n, segmentBytes);
        for (const n of await readdir(spoolOf(dir))) await rm(join(spoolOf(dir), n));
        await writeFile(join(spoolOf(dir), `${next}.partial`), Buffer.alloc(991_232));
        // Room for one segment but not two.
        await writeFile(join(dir, "other-data"), Buffer.alloc((await freeBytes(dir)) - segmentBytes * 1.5));
        const { lsn } = (
          await sql<
            { lsn: string }[]
          >`insert into canary values ('after-the-archived-segment') returning pg_current_wal_insert_lsn()::text as lsn`
        )[0]!;
        expect(segnoOf(parseLsn(lsn), segmentBytes)).toBe(parseSegment(next, segmentBytes)!.segno);

        // No archiver passes: they could free the room by chance, at the moment the receiver needs it.
        const { log, lines } = collector();
        stream = await startWalStream({
          sql,
          config: configFor(dir, { WAL_SLOT: "shinkei_room_behind" }),
          log,
          pollMs: 3_600_000,
          backoffMs: { min: 200, max: 400 },
          spaceCheckMs: 200,
        });
        // Resumed at the slot, the receiver would take the segment the archive holds again, and that
        // copy the room the next one needs: stopped for space for good, the row never received.
        await receiverFlushed(sql, lsn);
        const nextStart = formatLsn(segmentStart(parseSegment(next, segmentBytes)!.segno, segmentBytes));
        expect(lines.find((l) => String(l.detail).startsWith("starting log streaming at"))?.detail).toBe(
          `starting log streaming at ${nextStart} (timeline ${await timeline()})`,
        );
        expect(lines.some((l) => String(l.msg).startsWith("replication slot moved past the WAL"))).toBe(true);
        expect(await readdir(spoolOf(dir))).toEqual([`${next}.partial`]);
        expect((await readFile(join(spoolOf(dir), `${next}.partial`))).includes("after-the-archived-segment")).toBe(
          true,
        );
        expect(stream.receiver.diskFull()).toBe(false);
        expect(lines.some((l) => String(l.msg).startsWith("disk full"))).toBe(false);
      } finally {
        await stream?.stop();
        for (const slot of ["shinkei_room", "shinkei_room_behind"])
          await sql`select pg_drop_replication_slot(${slot})`.catch(() => {});
        await Bun.spawn(["umount", "-l", dir]).exited;
        await rm(dir, { recursive: true, force: true });
      }
    },
  );

  test.skipIf(!canMount)(
    "is reported at once (log, backup check, metric facts), and streaming resumes by itself when space returns, " +
      "with no gap",
    async () => {
      const dir = await tempDir("wal-full");
      expect(await mountTmpfs(dir, "64m")).toBe(true);
      const config = configFor(dir, { WAL_SLOT: "shinkei_full" });
      const { log, lines } = collector();
      let stream: WalStream | undefined;
      try {
        await mkdir(join(dir, "wal"), { recursive: true });
        stream = await startWalStream({
          sql,
          config,
          log,
          pollMs: 100,
          backoffMs: { min: 200, max: 30_000 },
          spaceCheckMs: 200,
        });
        const first = await commitFlushed("before-the-disk-fills");
        // Full for good: the receiver waits for space, and with the archiver's pass done less than a
        // segment is free. Archiving a finished segment frees most of its 16 MiB, so a first "disk full"
        // can pass by itself (the receiver restarts and streams on): checked at such a moment, the
        // checks below raced the archiver, and that restart could pass for the one the remount causes.
        const fullForGood = async () => {
          if (!stream!.receiver.diskFull()) return false;
          await stream!.drain();
          return stream!.receiver.diskFull() && (await freeBytes(dir)) < segmentBytes;
        };
        // Incompressible rows until then.
        for (let i = 0; i < 200 && !(await fullForGood()); i++) {
          await sql`insert into canary select (select string_agg(md5(random()::text || g || i), '')
            from generate_series(1, 16) i) from generate_series(1, 4000) g`;
        }
        expect(await fullForGood()).toBe(true);
        const full = lines.find((l) => String(l.msg).startsWith("disk full"))!;
        expect(full.level).toBe("error");
        expect(stream.receiver.diskFull()).toBe(true);
        const problems = pitrProblems(await pitrStatus(sql, config), config.wal.maxLagMs);
        expect(problems.some((p) => p.includes("less than one WAL segment"))).toBe(true);
        expect((await archiveWindow(dir, archiveTrust(undefined), segmentBytes)).spool.diskFull).toBe(true);
        const startsBefore = lines.filter((l) => l.msg === "wal receiver started").length;
        const { lsn } = (
          await sql<
            { lsn: string }[]
          >`insert into canary values ('while-the-disk-is-full') returning pg_current_wal_insert_lsn()::text as lsn`
        )[0]!;

        // Space returns; the receiver restarts within a few checks, not after its 30 s backoff.
        const grown = Bun.spawn(["mount", "-o", "remount,size=512m", dir]);
        expect(await grown.exited).toBe(0);
        await until(
          "the receiver to restart",
          async () => lines.filter((l) => l.msg === "wal receiver started").length > startsBefore,
          10_000,
        );
        expect(lines.some((l) => l.msg === "disk space returned: restarting the WAL receiver")).toBe(true);
        await receiverFlushed(sql, lsn);
        const last = segmentName(await timeline(), segnoOf(parseLsn(lsn), segmentBytes), segmentBytes);
        await archivedWal(stream, dir, last);
        const records = await listArchive(walRoot(dir));
        expect(findGaps(records, segmentBytes)).toEqual([]);
        expect(records.some((r) => r.name === first)).toBe(true);
        expect(records.filter((r) => r.kind === "partial")).toEqual([]);
        expect(stream.receiver.diskFull()).toBe(false);
        expect((await archiveWindow(dir, archiveTrust(undefined), segmentBytes)).spool.diskFull).toBe(false);
      } finally {
        await stream?.stop();
        await sql`select pg_drop_replication_slot('shinkei_full')`.catch(() => {});
        await Bun.spawn(["umount", "-l", dir]).exited;
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
