import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import type { Queryable } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { formatDuration } from "../duration.ts";
import { formatBytes } from "../bytes.ts";
import { listArchive, spoolDir, walRoot, type WalRecord } from "./archive.ts";
import { offsiteStatePath, walStore, type OffsiteState } from "./offsite.ts";
import { copiedTo } from "../storage/mirror.ts";
import { listBaseBackups, type BaseBackup } from "./base.ts";
import { findGaps, type Gap } from "./gaps.ts";
import { RECEIVER_APP_NAME } from "./receiver.ts";
import { freeBytes, refusedPartials, type Refused } from "./spool.ts";
import { slotStatus, type SlotStatus } from "./slot.ts";
import { serverInfo } from "../pg/server-info.ts";
import { archiveTrust, describeUntrusted, type ArchiveTrust, type Untrusted } from "./trust.ts";
import { DEFAULT_SEGMENT_BYTES, formatLsn, parseLsn, parseSegment, segmentName, segmentStart } from "./segments.ts";

export type TimelineWindow = {
  timeline: number;
  firstSegment: string;
  lastSegment: string;
  segments: number;
  /** Stop time of the oldest base backup on this timeline whose WAL is all here. */
  earliest: string | null;
  /** When the newest WAL reachable without a gap from that base backup was received. */
  latest: string | null;
};

export type PitrStatus = {
  archive: "off" | "stream";
  window: { earliest: string | null; latest: string | null; timeline: number | null };
  timelines: TimelineWindow[];
  baseBackups: {
    file: string;
    finishedAt: string;
    timeline: number;
    startLsn: string;
    stopLsn: string;
    walComplete: boolean;
  }[];
  gaps: Gap[];
  gapsAfterNewestBase: Gap[];
  /**
   * Base backups and WAL files this host may not use (unsigned, mis-signed, plain where it
   * encrypts): never part of the window.
   */
  untrusted: Untrusted[];
  receiving: { segment: string; receivedAt: string } | null;
  /**
   * Finished segments the archiver has not sealed yet (normally for a moment): held, but not
   * encrypted, checksummed or copied off-site.
   */
  unsealed: { segments: number; oldestReceivedAt: string | null };
  /**
   * The spool's disk: free bytes (null when unknown) and whether they are fewer than one segment,
   * which the receiver needs to start the next; and `.partial` files pg_receivewal would refuse.
   */
  spool: { freeBytes: number | null; diskFull: boolean; refused: Refused[] };
  receiver: {
    connected: boolean;
    state: string | null;
    flushLsn: string | null;
    serverLsn: string;
    lagBytes: number;
    lagSeconds: number;
    /** This role may not see the receiver's position (no pg_read_all_stats): it came from the slot, or our files. */
    positionHidden: boolean;
  };
  slot: SlotStatus | null;
  slotName: string | null;
  /** The off-site RPO: how much of what is on our disk is not yet in the store, when S3 is configured. */
  offsite: {
    location: string;
    coveredUntil: string | null;
    lagSeconds: number;
    notCopied: number;
    basesNotCopied: number;
    baseLagSeconds: number;
  } | null;
};

type Held = { segno: bigint; receivedAt: Date };

type Spooled = { name: string; timeline: number; segno: bigint; receivedAt: Date };

/**
 * What the spool holds: the segment pg_receivewal is writing now (its `.partial`; the newest when
 * several), and the ones it finished that wait for the archiver to seal them. Both are on our disk,
 * flushed by the receiver, and `pitr wal-fetch` serves them, so they count as held.
 */
async function spooled(
  spool: string,
  segmentBytes: number,
): Promise<{ current: Spooled | null; finished: Spooled[]; partials: Spooled[] }> {
  let current: Spooled | null = null;
  const finished: Spooled[] = [];
  const partials: Spooled[] = [];
  for (const n of await readdir(spool).catch(() => [] as string[])) {
    const partial = n.endsWith(".partial");
    const s = parseSegment(partial ? n.slice(0, -".partial".length) : n, segmentBytes);
    if (!s) continue;
    const st = await stat(join(spool, n)).catch(() => null);
    if (!st) continue;
    const found = { name: s.name, timeline: s.timeline, segno: s.segno, receivedAt: st.mtime };
    if (!partial) {
      finished.push(found);
      continue;
    }
    partials.push(found);
    if (!current || s.timeline > current.timeline || (s.timeline === current.timeline && s.segno > current.segno))
      current = found;
  }
  return { current, finished, partials };
}

/**
 * The newest received time reachable from `from` without a gap, or null when `from` itself is
 * missing. A segment held only as an archived partial (an old timeline's last segment, the start of
 * a gap) is replayed as far as it goes and ends the reach there: what follows it is missing.
 */
function reach(
  held: Map<bigint, Held>,
  from: bigint,
  partials: Map<bigint, Held> = new Map(),
): { last: bigint; at: Date } | null {
  if (!held.has(from)) return null;
  let s = from;
  while (held.has(s + 1n)) s++;
  const tail = partials.get(s + 1n);
  if (tail)
    return { last: s, at: tail.receivedAt > held.get(s)!.receivedAt ? tail.receivedAt : held.get(s)!.receivedAt };
  return { last: s, at: held.get(s)!.receivedAt };
}

export type ArchiveWindow = Pick<
  PitrStatus,
  | "window"
  | "timelines"
  | "baseBackups"
  | "gaps"
  | "gapsAfterNewestBase"
  | "untrusted"
  | "receiving"
  | "unsealed"
  | "spool"
>;

/**
 * What the files in BACKUP_DIR can recover to, without asking the server: per timeline, from the
 * oldest base backup whose WAL is complete to the newest WAL reachable from one without a gap.
 * `segmentBytes` defaults to what the archive's records say. Only what `trust` accepts counts; the
 * rest is named in `untrusted`.
 */
export async function archiveWindow(
  backupDir: string,
  trust: ArchiveTrust,
  segmentBytes?: number,
): Promise<
  ArchiveWindow & {
    records: WalRecord[];
    bases: BaseBackup[];
    current: Spooled | null;
    spooled: Spooled[];
    segmentBytes: number;
  }
> {
  const untrusted: Untrusted[] = [];
  const records = await listArchive(walRoot(backupDir), undefined, trust, untrusted);
  const bases = await listBaseBackups(backupDir, trust, untrusted);
  const seg = segmentBytes ?? records[0]?.segmentBytes ?? bases[0]?.manifest.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  const { current, finished, partials } = await spooled(spoolDir(backupDir), seg);
  // A segment sealed between the two listings left the spool after the archive was read: read the
  // archive again for what is new, or it would be in neither and show as a gap that is not there.
  const late = await listArchive(walRoot(backupDir), new Set(records.map((r) => r.name)), trust, []);
  if (late.length) {
    records.push(...late);
    records.sort((a, b) => a.timeline - b.timeline || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
  // Only where a spool exists (streaming was set up): BACKUP_DIR itself answers for dumps.
  const free = (await stat(spoolDir(backupDir)).catch(() => null)) ? await freeBytes(spoolDir(backupDir)) : Infinity;

  const byTimeline = new Map<number, Map<bigint, Held>>();
  const hold = (timeline: number, segno: bigint, receivedAt: Date) => {
    if (!byTimeline.has(timeline)) byTimeline.set(timeline, new Map());
    byTimeline.get(timeline)!.set(segno, { segno, receivedAt });
  };
  for (const r of records.filter((x) => x.kind === "segment"))
    hold(r.timeline, parseSegment(r.name, seg)!.segno, new Date(r.receivedAt));
  // Archived partials, apart: they end a reach (see reach) but are no segment held whole.
  // An older timeline's last segment waits in the spool as .partial until the archiver keeps it as one.
  const partialsByTimeline = new Map<number, Map<bigint, Held>>();
  const ends = [
    ...records
      .filter((x) => x.kind === "partial")
      .map((r) => ({ name: r.name.replace(/\.partial$/, ""), timeline: r.timeline, at: new Date(r.receivedAt) })),
    ...partials.filter((p) => p !== current).map((p) => ({ name: p.name, timeline: p.timeline, at: p.receivedAt })),
  ];
  for (const r of ends) {
    const s = parseSegment(r.name, seg);
    if (!s) continue;
    if (!partialsByTimeline.has(r.timeline)) partialsByTimeline.set(r.timeline, new Map());
    const at = r.at;
    const had = partialsByTimeline.get(r.timeline)!.get(s.segno);
    if (!had || had.receivedAt < at)
      partialsByTimeline.get(r.timeline)!.set(s.segno, { segno: s.segno, receivedAt: at });
  }
  for (const f of finished) hold(f.timeline, f.segno, f.receivedAt);
  if (current) hold(current.timeline, current.segno, current.receivedAt);

  const baseRows = bases.map((b) => {
    const held = byTimeline.get(b.manifest.timeline) ?? new Map();
    const start = parseSegment(b.manifest.startSegment, seg)!.segno;
    const stop = parseSegment(b.manifest.stopSegment, seg)!.segno;
    const r = reach(held, start, partialsByTimeline.get(b.manifest.timeline));
    return { b, reach: r, walComplete: r !== null && r.last >= stop };
  });

  // How far each timeline's WAL goes on from a base backup it can be recovered from, once known:
  // the oldest such base's stop time, and the last segment reached.
  const reached = new Map<number, { earliest: string; last: bigint }>();
  const histories = new Set(records.filter((r) => r.kind === "history").map((r) => r.timeline));
  const timelines: TimelineWindow[] = [...byTimeline.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([timeline, held]) => {
      const segnos = [...held.keys()].sort((a, b) => (a < b ? -1 : 1));
      const usable = baseRows.filter((x) => x.walComplete && x.b.manifest.timeline === timeline);
      const name = (s: bigint) => segmentName(timeline, s, seg);
      const row = {
        timeline,
        firstSegment: name(segnos[0]!),
        lastSegment: name(segnos.at(-1)!),
        segments: segnos.length,
        earliest: usable[0]?.b.manifest.finishedAt ?? null,
        latest: usable.length ? new Date(Math.max(...usable.map((x) => x.reach!.at.getTime()))).toISOString() : null,
      };
      if (usable.length) {
        const last = usable.reduce((m, x) => (x.reach!.last > m ? x.reach!.last : m), -1n);
        reached.set(timeline, { earliest: row.earliest!, last });
        return row;
      }
      // A timeline a failover began has no base backup of its own until the next one is taken. Its
      // moments are recovered from the timeline it branched from: a base backup there whose WAL
      // reaches the switch, then this timeline's WAL from its first segment (the switch's) on, as a
      // drill does. The parent is taken to be the nearest lower timeline holding WAL; PostgreSQL
      // follows the history file itself, and were it another, recovery would stop short and the
      // restore say so (recover.ts). Without this, every moment since a failover read as "after
      // the recoverable window" until the next base backup.
      const lower = [...byTimeline.keys()].filter((t) => t < timeline);
      const parent = lower.length ? reached.get(Math.max(...lower)) : undefined;
      const from = segnos[0]!;
      if (!parent || !histories.has(timeline) || parent.last < from - 1n) return row;
      const onward = reach(held, from, partialsByTimeline.get(timeline));
      if (!onward) return row;
      reached.set(timeline, { earliest: parent.earliest, last: onward.last });
      return { ...row, earliest: parent.earliest, latest: onward.at.toISOString() };
    });
  const withWindow = timelines.filter((t) => t.earliest);
  const newestTl = withWindow.at(-1);

  const gaps = findGaps(records, seg, [...finished.map((f) => f.name), ...(current ? [current.name] : [])]);
  const newestBase = bases.at(-1);
  const gapsAfterNewestBase = newestBase
    ? gaps.filter(
        (g) =>
          g.timeline > newestBase.manifest.timeline ||
          (g.timeline === newestBase.manifest.timeline &&
            parseSegment(g.to, seg)!.segno >= parseSegment(newestBase.manifest.startSegment, seg)!.segno),
      )
    : [];

  return {
    window: {
      earliest: newestTl ? withWindow[0]!.earliest : null,
      latest: newestTl?.latest ?? null,
      timeline: newestTl?.timeline ?? null,
    },
    timelines,
    baseBackups: baseRows.map(({ b, walComplete }) => ({
      file: b.name,
      finishedAt: b.manifest.finishedAt,
      timeline: b.manifest.timeline,
      startLsn: b.manifest.startLsn,
      stopLsn: b.manifest.stopLsn,
      walComplete,
    })),
    gaps,
    gapsAfterNewestBase,
    untrusted,
    receiving: current ? { segment: current.name, receivedAt: current.receivedAt.toISOString() } : null,
    unsealed: {
      segments: finished.length,
      oldestReceivedAt: finished.length
        ? new Date(Math.min(...finished.map((f) => f.receivedAt.getTime()))).toISOString()
        : null,
    },
    spool: {
      freeBytes: Number.isFinite(free) ? free : null,
      diskFull: free < seg,
      refused: await refusedPartials(spoolDir(backupDir), seg),
    },
    records,
    bases,
    current,
    spooled: finished,
    segmentBytes: seg,
  };
}

/** When the newest WAL we hold (archived, finished in the spool, or being received) was received; 0 for none. */
export function newestHeld(w: { records: WalRecord[]; current: Spooled | null; spooled: Spooled[] }): number {
  return Math.max(
    w.current?.receivedAt.getTime() ?? 0,
    ...w.records.map((r) => Date.parse(r.receivedAt)),
    ...w.spooled.map((f) => f.receivedAt.getTime()),
  );
}

/**
 * What can be recovered to (archiveWindow), and how far the receiver trails the server: its
 * current LSN, pg_stat_replication and the slot.
 */
export async function pitrStatus(sql: Queryable, config: Config): Promise<PitrStatus> {
  const info = await serverInfo(sql);
  const {
    records,
    bases: _bases,
    current,
    spooled,
    segmentBytes: seg,
    ...w
  } = await archiveWindow(config.backupDir, archiveTrust(config.backup.age), info.segmentBytes);
  const [server] = await sql<{ lsn: string }[]>`select pg_current_wal_lsn()::text as lsn`;
  const [rep] = await sql<{ state: string | null; flush_lsn: string | null; flush_lag: number | null }[]>`
    select state, flush_lsn::text, extract(epoch from flush_lag)::float8 as flush_lag
    from pg_stat_replication where application_name = ${RECEIVER_APP_NAME} order by backend_start desc limit 1`;
  const slot = config.wal.slot ? await slotStatus(sql, config.wal.slot) : null;
  const serverLsn = parseLsn(server!.lsn);
  const segnos = [
    ...records.filter((r) => r.kind === "segment").map((r) => parseSegment(r.name, seg)?.segno ?? 0n),
    ...spooled.map((f) => f.segno),
  ];
  const newestWhole = segnos.reduce((a, b) => (b > a ? b : a), -1n);
  const localEnd = current
    ? segmentStart(current.segno, seg)
    : newestWhole >= 0n
      ? segmentStart(newestWhole, seg) + BigInt(seg)
      : 0n;
  // Without pg_read_all_stats the server hides a receiver's position (state, flush_lsn, flush_lag
  // come back NULL); the slot's restart_lsn, which the receiver's flush reports move, says the same.
  const positionHidden = Boolean(rep) && rep!.state === null;
  const flushed = rep?.flush_lsn
    ? parseLsn(rep.flush_lsn)
    : positionHidden && slot?.restartLsn
      ? parseLsn(slot.restartLsn)
      : localEnd;
  let lagBytes = Number(serverLsn > flushed ? serverLsn - flushed : 0n);
  // Without WAL_SYNC the receiver reports its flush (and so moves the slot) only at segment ends:
  // with the position hidden, less than a segment behind is as close as we can tell.
  if (positionHidden && rep && !config.wal.synchronous && lagBytes < seg) lagBytes = 0;
  const newestReceived = newestHeld({ records, current, spooled });
  // Connected: the server's own measure. Not connected (or hidden) and behind: everything since the
  // last WAL we got is at risk.
  const lagSeconds =
    lagBytes === 0
      ? 0
      : rep && !positionHidden
        ? Number(rep.flush_lag ?? 0)
        : newestReceived
          ? (Date.now() - newestReceived) / 1000
          : Infinity;

  return {
    archive: config.wal.archive,
    ...w,
    receiver: {
      connected: Boolean(rep),
      state: rep?.state ?? null,
      flushLsn: flushed ? formatLsn(flushed) : null,
      serverLsn: server!.lsn,
      lagBytes,
      lagSeconds: Number.isFinite(lagSeconds) ? Math.round(lagSeconds * 10) / 10 : -1,
      positionHidden,
    },
    slot,
    offsite: await offsiteCoverage(config, records, newestReceived),
    slotName: config.wal.slot ?? null,
  };
}

/**
 * How far the off-site copy trails the local archive. WAL: the span of received time it lacks (from
 * the newest moment it covers to the newest we hold; with nothing copied yet, from the oldest we
 * hold). Base backups: how long the oldest one not yet copied has waited. Both are 0 when nothing
 * waits, and grow with every second of an outage while the server writes.
 */
export async function offsiteCoverage(
  config: Config,
  records: WalRecord[],
  newestLocal: number,
  bases?: BaseBackup[],
): Promise<PitrStatus["offsite"]> {
  const store = walStore(config);
  if (!store) return null;
  const copied = records.filter((r) => copiedTo(r, store));
  const state = (await Bun.file(offsiteStatePath(config.backupDir))
    .json()
    .catch(() => null)) as OffsiteState | null;
  const partialAt = state?.location === store.location ? Date.parse(state.partial.receivedAt) || 0 : 0;
  const covered = Math.max(partialAt, ...copied.map((r) => Date.parse(r.receivedAt)));
  const oldestLocal = Math.min(...records.map((r) => Date.parse(r.receivedAt)));
  const from = covered > 0 ? covered : Number.isFinite(oldestLocal) ? oldestLocal : newestLocal;
  const pendingBases = (bases ?? (await listBaseBackups(config.backupDir))).filter((b) => !copiedTo(b.manifest, store));
  const oldestPendingBase = Math.min(...pendingBases.map((b) => Date.parse(b.manifest.finishedAt)));
  return {
    location: store.location,
    coveredUntil: covered > 0 ? new Date(covered).toISOString() : null,
    lagSeconds: newestLocal > 0 ? Math.max(0, Math.round((newestLocal - from) / 100) / 10) : 0,
    notCopied: records.length - copied.length,
    basesNotCopied: pendingBases.length,
    baseLagSeconds: pendingBases.length ? Math.max(0, Math.round((Date.now() - oldestPendingBase) / 100) / 10) : 0,
  };
}

/** Reasons the off-site copy fails `backup check`: it trails the local archive by more than PITR_OFFSITE_MAX_LAG. */
export function offsiteProblems(o: PitrStatus["offsite"], maxLagMs: number): string[] {
  if (!o) return [];
  const problems: string[] = [];
  if (o.lagSeconds * 1000 > maxLagMs) {
    problems.push(
      `the off-site WAL copy at ${o.location} trails the local archive ` +
        `by ${formatDuration(o.lagSeconds * 1000)} (${o.notCopied} file(s) not copied; covers up ` +
        `to ${o.coveredUntil ?? "nothing yet"}), more than PITR_OFFSITE_MAX_LAG ${formatDuration(maxLagMs)}`,
    );
  }
  if (o.baseLagSeconds * 1000 > maxLagMs) {
    problems.push(
      `${o.basesNotCopied} base backup(s) not copied to ${o.location}, the oldest ` +
        `for ${formatDuration(o.baseLagSeconds * 1000)}, more than ` +
        `PITR_OFFSITE_MAX_LAG ${formatDuration(maxLagMs)}`,
    );
  }
  return problems;
}

/** Reasons `backup check` fails on the point-in-time archive; empty when it is healthy. */
export function pitrProblems(s: PitrStatus, maxLagMs: number, offsiteMaxLagMs = Infinity): string[] {
  const problems: string[] = offsiteProblems(s.offsite, offsiteMaxLagMs);
  if (s.receiver.lagSeconds < 0 || s.receiver.lagSeconds * 1000 > maxLagMs) {
    const since =
      s.receiver.lagSeconds >= 0
        ? ` (${formatDuration(s.receiver.lagSeconds * 1000)})`
        : ", and has received nothing yet";
    problems.push(
      `the WAL archive is ${formatBytes(s.receiver.lagBytes)} behind the server${since}, ` +
        `more than PITR_MAX_LAG ${formatDuration(maxLagMs)}`,
    );
  }
  if (s.slotName && !s.slot) problems.push(`replication slot "${s.slotName}" does not exist`);
  if (s.slot && (s.slot.walStatus === "lost" || s.slot.walStatus === "unreserved")) {
    problems.push(
      `replication slot "${s.slot.name}" is ${s.slot.walStatus}: the ` +
        `server ${s.slot.walStatus === "lost" ? "has removed" : "is about to remove"} WAL the archive has ` +
        `not received`,
    );
  }
  const unsealedSince = s.unsealed.oldestReceivedAt ? Date.parse(s.unsealed.oldestReceivedAt) : null;
  if (unsealedSince !== null && Date.now() - unsealedSince > maxLagMs) {
    problems.push(
      `${s.unsealed.segments} finished WAL segment(s) wait in the spool unsealed ` +
        `since ${s.unsealed.oldestReceivedAt} (more than PITR_MAX_LAG ${formatDuration(maxLagMs)}): the ` +
        `archiver is not sealing them, so they are neither encrypted, checksummed nor copied off-site`,
    );
  }
  if (s.spool.diskFull) {
    problems.push(
      `the WAL spool's disk has ${formatBytes(s.spool.freeBytes ?? 0)} free, less than one WAL segment: ` +
        `the receiver cannot write the next one (it restarts by itself when space returns; the slot keeps ` +
        `the WAL meanwhile, until max_slot_wal_keep_size)`,
    );
  }
  for (const r of s.spool.refused)
    problems.push(
      `${r.name} in the WAL spool has ${r.sizeBytes} bytes, neither 0 nor a whole segment: pg_receivewal ` +
        `refuses it (the backup service repairs it when the receiver restarts)`,
    );
  if (s.baseBackups.length === 0) problems.push("no base backup yet: nothing to replay the WAL onto");
  for (const line of describeUntrusted(s.untrusted)) problems.push(`left out of the window: ${line}`);
  for (const g of s.gapsAfterNewestBase)
    problems.push(
      `WAL gap after the newest base backup: ${g.from} to ${g.to} (${g.segments} segment(s)) on timeline ${g.timeline}`,
    );
  return problems;
}

export function assertPitrHealthy(s: PitrStatus, maxLagMs: number, offsiteMaxLagMs = Infinity): void {
  const problems = pitrProblems(s, maxLagMs, offsiteMaxLagMs);
  if (problems.length) {
    throw new ShinkeiError("PITR_AT_RISK", problems.join("; "), {
      hint: "See shinkei pitr status, and the backup service's log (wal receiver lines).",
      details: { problems },
    });
  }
}
