import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import type { Queryable } from "../pg/db.ts";
import type { Log } from "../log.ts";
import { findTool } from "../pg/bin.ts";
import { serverInfo } from "../pg/server-info.ts";
import { ensureSlot, slotStatus } from "./slot.ts";
import { RECEIVER_APP_NAME, superviseReceiver, type Receiver } from "./receiver.ts";
import { ShinkeiError } from "../errors.ts";
import { archiveWalFile, listArchive, spoolDir, walRoot } from "./archive.ts";
import { startWalUploader, walStore, type WalUploader } from "./offsite.ts";
import { freeBytes, holdsData, repairSpool } from "./spool.ts";
import { setAsideUnsigned, SpoolSigner } from "./spoolsign.ts";
import { archiveTrust, signedPart, spoolSignaturePath } from "./trust.ts";
import { startPoller } from "../service/poller.ts";
import { formatLsn, parseHistory, parseLsn, parseSegment, segmentName, segmentStart, segnoOf } from "./segments.ts";

export type WalStream = {
  receiver: Receiver;
  /** Off-site copying, when S3 is configured. */
  uploader?: WalUploader;
  /** Archive whatever the spool holds now (the service does this on its own every `pollMs`). */
  drain(): Promise<void>;
  stop(): Promise<void>;
};

/**
 * A receiver named in synchronous_standby_names makes every commit on the primary wait for it,
 * and stop when it stops: refused. `*` matches it too: said loudly, since other standbys may be meant.
 */
async function checkNotSynchronousStandby(sql: Queryable, log: Log): Promise<void> {
  const [row] = await sql<{ v: string }[]>`select current_setting('synchronous_standby_names') as v`;
  const names = row!.v
    .replace(/^\s*(first|any)\s+\d+\s*\(|^\s*\d+\s*\(|\)\s*$/gi, "")
    .split(",")
    .map((n) => n.trim().replace(/^"|"$/g, ""));
  if (names.some((n) => n.toLowerCase() === RECEIVER_APP_NAME)) {
    throw new ShinkeiError(
      "WAL_RECEIVER_SYNCHRONOUS",
      `synchronous_standby_names names the WAL receiver (${RECEIVER_APP_NAME}): every commit would wait ` +
        `for it, and writes would stop whenever it stops`,
      {
        hint:
          `Remove ${RECEIVER_APP_NAME} from synchronous_standby_names and reload; --synchronous already ` +
          `makes what it reports received durable on our side.`,
      },
    );
  }
  if (names.includes("*"))
    log({
      level: "warn",
      msg:
        `synchronous_standby_names is '*': the WAL receiver (${RECEIVER_APP_NAME}) can become the ` +
        `synchronous standby, and commits would wait for it`,
    });
}

type GapCheck = { root: string; spool: string; segmentBytes: number; slot?: string; log: Log };

/**
 * A receiver that starts past the newest archived segment has skipped WAL: say so, once, loudly.
 * Throws when it cannot tell (the spool cannot be listed, say): see checkForGap.
 */
export async function reportGap(at: GapCheck, lsn: string, timeline: number): Promise<void> {
  const { root, spool, segmentBytes, slot, log } = at;
  const startSeg = segnoOf(parseLsn(lsn), segmentBytes);
  // Finished segments still waiting in the spool count: the receiver resumes after them. A
  // segment kept only as a partial (the receiver stopped inside it) is the start of the hole.
  const archived = await listArchive(root);
  const segnos = (names: string[]) =>
    names
      .map((n) => parseSegment(n, segmentBytes))
      .filter((x) => x?.timeline === timeline)
      .map((x) => x!.segno);
  const newest = (xs: bigint[]) =>
    xs.reduce<bigint | undefined>((a, b) => (a === undefined || b > a ? b : a), undefined);
  const full = newest(
    segnos([...archived.filter((r) => r.kind === "segment").map((r) => r.name), ...(await readdir(spool))]),
  );
  const partial = newest(
    segnos(archived.filter((r) => r.kind === "partial").map((r) => r.name.replace(/\.partial$/, ""))),
  );
  const missingFrom =
    partial !== undefined && (full === undefined || partial > full)
      ? partial
      : full === undefined
        ? undefined
        : full + 1n;
  if (missingFrom !== undefined && startSeg > missingFrom) {
    const from = segmentName(timeline, missingFrom, segmentBytes);
    const to = segmentName(timeline, startSeg - 1n, segmentBytes);
    log({
      level: "error",
      msg: "wal gap: the receiver resumes past WAL it never received",
      timeline,
      from,
      to,
      segments: Number(startSeg - missingFrom),
      slot: slot ?? null,
    });
  }
}

/**
 * reportGap beside the receiver, never throwing. A check that fails is the one place a hole in
 * the archive would go unannounced: it is logged as an error with where the receiver resumed, so
 * what may be missing (WAL of that timeline before `resumesAt` not in the archive) is named.
 */
export async function checkForGap(at: GapCheck, lsn: string, timeline: number): Promise<void> {
  await reportGap(at, lsn, timeline).catch((e: Error) => {
    let resumesAt: string | null = null;
    try {
      resumesAt = segmentName(timeline, segnoOf(parseLsn(lsn), at.segmentBytes), at.segmentBytes);
    } catch {}
    at.log({
      level: "error",
      msg:
        "wal gap check failed: WAL before the receiver's start may be missing from the archive (shinkei pitr " +
        "status shows gaps)",
      timeline,
      resumedAtLsn: lsn,
      resumesAt,
      slot: at.slot ?? null,
      error: e.message,
    });
  });
}

/**
 * Continuous archiving: pg_receivewal (supervised) writes the server's WAL into the spool; every
 * finished segment and timeline history file is then sealed into the archive and removed from
 * the spool. The segment still being received stays there as `.partial`, flushed by the receiver.
 */
export async function startWalStream(deps: {
  sql: Queryable;
  config: Config;
  log: Log;
  pollMs?: number;
  uploadEveryMs?: number;
  backoffMs?: { min: number; max: number };
  spaceCheckMs?: number;
}): Promise<WalStream> {
  const { sql, config, log } = deps;
  const info = await serverInfo(sql);
  const tool = await findTool("pg_receivewal", info.major);
  await checkNotSynchronousStandby(sql, log);
  const { slot } = config.wal;
  if (slot) {
    const s = await ensureSlot(sql, slot);
    log({
      level: "info",
      msg: s.created ? "replication slot created" : "replication slot found",
      slot,
      walStatus: s.status.walStatus,
      safeWalSize: s.status.safeWalSize,
    });
  } else {
    log({
      level: "warn",
      msg:
        "streaming without a replication slot (WAL_SLOT=none): WAL the server recycles while the receiver is " +
        "down is lost, and shows as a gap",
    });
  }
  const spool = spoolDir(config.backupDir);
  const root = walRoot(config.backupDir);
  await mkdir(spool, { recursive: true, mode: 0o700 });

  const failing = new Set<string>();
  let chain = Promise.resolve();
  // With a key, the spool's files are signed as the receiver writes them, and only what is signed
  // is sealed (or served to a recovery): a file planted in the spool is neither.
  const key = config.backup.age?.manifestKey || undefined;
  const hidden = { said: false };
  const signer = key
    ? new SpoolSigner({
        backupDir: config.backupDir,
        spool,
        key,
        segmentBytes: info.segmentBytes,
        log,
        // The server out of reach: nothing is signed further until it answers (the receiver is down too).
        position: () => receiverPosition(sql, slot, log, hidden).catch(() => null),
      })
    : undefined;
  const unsignedPartials = new Set<string>();
  const archiveOne = async (name: string) => {
    // A partial of zeros (or none at all) holds no WAL: archived, it would pass for the received
    // start of a segment that the archive in fact lacks.
    if (name.endsWith(".partial") && !(await holdsData(join(spool, name)))) {
      await rm(join(spool, name), { force: true });
      log({ level: "info", msg: "wal partial without WAL removed, not archived", file: name });
      return;
    }
    const signed = key ? await signedPart(config.backupDir, name, key) : undefined;
    // With a key a partial is sealed as far as it was signed, zeros after: signed to nothing, it
    // would be the zero partial above under another name. Kept (it may hold WAL the receiver wrote
    // while its position could not be read) and said once; it is never archived.
    if (key && name.endsWith(".partial") && !signed?.bytes) {
      if (!unsignedPartials.has(name)) {
        unsignedPartials.add(name);
        log({ level: "warn", msg: "wal partial with nothing signed left in the spool, not archived", file: name });
      }
      return;
    }
    const { record, written } = await archiveWalFile(join(spool, name), root, {
      age: config.backup.age,
      segmentBytes: info.segmentBytes,
      signed,
    });
    await rm(join(spool, name), { force: true });
    if (written)
      log({
        level: "info",
        msg: "wal archived",
        file: name,
        timeline: record.timeline,
        kind: record.kind,
        sizeBytes: record.sizeBytes,
        sha256: record.sha256,
      });
  };
  const drainOnce = async () => {
    const listed = await readdir(spool).catch(() => [] as string[]);
    // Listed first: every file this pass may seal has been through the signer's pass (a segment
    // finished meanwhile waits for the next one).
    await signer
      ?.pass()
      .catch((e: Error) => log({ level: "error", msg: "signing the wal spool failed", error: e.message }));
    // With a key, a file the signer has not signed (yet) waits: the receiver's position may pass
    // it at the next pass; one it never signs (planted) the signer names.
    const names = signer ? await signedOnly(config.backupDir, listed) : listed;
    // After a timeline switch the old timeline's last segment stays `.partial` for good: keep it as one.
    const timelines = names.map(
      (n) => parseSegment(n.replace(/\.partial$/, ""), info.segmentBytes)?.timeline ?? parseHistory(n) ?? 0,
    );
    // With a key, only the receiver's own word moves the timeline: a history file planted in the
    // spool would otherwise have the partial it writes sealed as an old timeline's last segment.
    const newest = signer ? (signer.timeline ?? 0) : Math.max(0, ...timelines);
    for (const [i, name] of names.entries()) {
      if (name.endsWith(".partial") && timelines[i]! > 0 && timelines[i]! < newest) {
        await archiveOne(name).catch((e: Error) =>
          log({ level: "error", msg: "wal archiving failed; retrying", file: name, error: e.message }),
        );
      }
    }
    // History files first: a segment of a new timeline is only useful with its history.
    const done = names
      .filter((n) => parseHistory(n) !== null)
      .concat(names.filter((n) => parseSegment(n, info.segmentBytes)).sort());
    for (const name of done) {
      try {
        await archiveOne(name);
        failing.delete(name);
      } catch (e) {
        if (!failing.has(name))
          log({ level: "error", msg: "wal archiving failed; retrying", file: name, error: (e as Error).message });
        failing.add(name);
      }
    }
  };
  // One pass at a time; a caller's drain runs after any pass already under way, so it sees the latest files.
  const drain = () => (chain = chain.then(drainOnce, drainOnce));

  /**
   * The server no longer has the segment the receiver would resume from (no slot, or a lost one):
   * retrying cannot help. Keep what was received of it as a partial, and let the receiver start
   * again at the server's current position. The hole stays visible as a gap.
   */
  const onExit = async (lines: string[]) => {
    const removed = lines
      .map((l) => /requested WAL segment ([0-9A-F]{24}) has already been removed/.exec(l)?.[1])
      .find(Boolean);
    if (!removed) return;
    await drain();
    const partials = (await readdir(spool)).filter(
      (n) => n.endsWith(".partial") && parseSegment(n.slice(0, -8), info.segmentBytes),
    );
    for (const name of partials) await archiveOne(name);
    log({
      level: "error",
      msg:
        "wal receiver cannot resume: the server removed WAL before it was received; restarting at the " +
        "server's current position",
      missingFrom: removed,
      keptPartial: partials,
      slot: slot ?? null,
    });
    if (slot) await renewLostSlot(removed);
  };
  /**
   * With the spool empty, pg_receivewal resumes from the slot's restart_lsn. A lost slot has none
   * (the receiver then starts at the server's position), but the request that just failed can set
   * one again, pointing at the WAL that is gone: every restart would ask for it and fail, and the
   * archive would never resume. Such a slot holds nothing worth keeping: make it anew, reserving
   * from now. The hole stays named as a gap when the receiver starts.
   */
  const renewLostSlot = async (removed: string) => {
    const status = await slotStatus(sql, slot!).catch(() => null);
    const missing = parseSegment(removed, info.segmentBytes)?.segno;
    if (
      !status?.restartLsn ||
      missing === undefined ||
      segnoOf(parseLsn(status.restartLsn), info.segmentBytes) > missing
    )
      return;
    for (let attempt = 0; ; attempt++) {
      try {
        // Active for a moment after pg_receivewal exits, until its walsender has gone.
        await sql`select pg_catalog.pg_drop_replication_slot(${slot!}::name) from pg_catalog.pg_replication_slots
          where slot_name = ${slot!}::name and not active`;
        const { created } = await ensureSlot(sql, slot!);
        if (created)
          log({
            level: "error",
            msg:
              "replication slot made anew: it pointed at WAL the server had removed, so the receiver could " +
              "not resume",
            slot,
            restartLsn: status.restartLsn,
            missingFrom: removed,
          });
        if (created || attempt >= 20) return;
      } catch (e) {
        log({
          level: "error",
          msg: "replication slot could not be made anew; the receiver keeps retrying",
          slot,
          error: (e as Error).message,
        });
        return;
      }
      await Bun.sleep(100);
    }
  };
  /**
   * pg_receivewal resumes after the newest segment in the spool, else from the start of the segment
   * holding the slot's restart position. The archiver empties the spool, and the slot trails what was
   * received: the receiver reports its flush once a second, and one that exits as a segment ends (a
   * full disk stops it as it opens the next) never reports it. A restart would then receive again a
   * segment the archive holds, and on a disk with room for one segment but not two it never gets
   * further: the copy takes the room the next segment needs, the receiver stops for space, the archiver
   * drops the copy (archived already), and the receiver starts over at the same place, while the disk
   * shows a segment free. With nothing in the spool to resume from, the slot is moved past the
   * segments the archive holds whole, of the server's timeline: the server keeps the WAL from there.
   */
  const skipArchived = async () => {
    if (!slot) return;
    const held = (await readdir(spool)).some((n) => parseSegment(n.replace(/\.partial$/, ""), info.segmentBytes));
    if (held) return;
    const [row] = await sql<{ walfile: string }[]>`select pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())
      as walfile`;
    const timeline = parseSegment(row!.walfile, info.segmentBytes)!.timeline;
    // Only what a recovery would take from the archive (signed, and encrypted when it should be) counts.
    const archived = new Set(
      (await listArchive(root, undefined, archiveTrust(config.backup.age)))
        .filter((r) => r.kind === "segment" && r.timeline === timeline)
        .map((r) => parseSegment(r.name, info.segmentBytes)!.segno),
    );
    // The walsender of a receiver that just exited holds the slot for a moment.
    for (let attempt = 0; attempt < 20; attempt++) {
      const status = await slotStatus(sql, slot);
      if (!status?.restartLsn) return;
      if (status.active) {
        await Bun.sleep(100);
        continue;
      }
      const from = segnoOf(parseLsn(status.restartLsn), info.segmentBytes);
      let next = from;
      while (archived.has(next)) next++;
      if (next === from) return;
      const to = formatLsn(segmentStart(next, info.segmentBytes));
      await sql`select pg_catalog.pg_replication_slot_advance(${slot}::name, ${to}::pg_lsn)`;
      log({
        level: "info",
        msg: "replication slot moved past the WAL the archive holds: the receiver resumes after it",
        slot,
        restartLsn: status.restartLsn,
        movedTo: to,
        archivedUpTo: segmentName(timeline, next - 1n, info.segmentBytes),
      });
      return;
    }
  };
  const onStart = (lsn: string, timeline: number) =>
    void checkForGap({ root, spool, segmentBytes: info.segmentBytes, slot, log }, lsn, timeline);
  const receiver = superviseReceiver({
    tool,
    url: config.databaseUrl,
    spool,
    slot,
    synchronous: config.wal.synchronous,
    nice: config.wal.receiverNice,
    log,
    backoffMs: deps.backoffMs,
    onExit,
    onStart,
    onPosition: (lsn, timeline) => signer?.expect(lsn, timeline),
    beforeStart: async () => {
      await repairSpool(spool, info.segmentBytes, log);
      if (key) await setAsideUnsigned(config.backupDir, spool, key, log);
      // Last, with the spool as the receiver will find it. Without it the receiver only fetches a segment again.
      await skipArchived().catch((e: Error) =>
        log({ level: "warn", msg: "replication slot not moved past the archived WAL", slot, error: e.message }),
      );
    },
    space: { free: () => freeBytes(spool), needBytes: info.segmentBytes, checkMs: deps.spaceCheckMs },
  });
  const poller = startPoller(drain, deps.pollMs ?? 500);
  const store = walStore(config);
  const uploader = store
    ? startWalUploader({ store, config, log, segmentBytes: info.segmentBytes, everyMs: deps.uploadEveryMs })
    : undefined;
  return {
    receiver,
    uploader,
    drain,
    async stop() {
      // The receiver stops first, as promptly as ever; a drain pass under way then finishes.
      const polling = poller.stop();
      await receiver.stop();
      await polling;
      await drain();
      await uploader?.stop();
    },
  };
}

/** The spool files (of `names`) that have a signature beside them; whether it holds is checked when sealed. */
async function signedOnly(backupDir: string, names: string[]): Promise<string[]> {
  const has = await Promise.all(names.map((n) => Bun.file(spoolSignaturePath(backupDir, n)).exists()));
  return names.filter((_, i) => has[i]);
}

/**
 * Where the server says our receiver has written to (pg_stat_replication's write_lsn): the spool is
 * signed no further. flush_lsn would do only with WAL_SYNC: without it pg_receivewal reports its
 * flush at segment ends, and the segment being received would go unsigned. With a slot, the
 * receiver is the walsender holding it; without one, the newest named like ours. A server that
 * hides the position (no pg_read_all_stats) still shows the slot's restart_lsn, which the
 * receiver's flush moves: signing then trails by what it has not flushed. Null: nothing signed further.
 */
async function receiverPosition(
  sql: Queryable,
  slot: string | undefined,
  log: Log,
  hidden: { said: boolean },
): Promise<bigint | null> {
  const rows = slot
    ? await sql<{ write: string | null; flushed: string | null }[]>`
        select r.write_lsn::text as write, s.restart_lsn::text as flushed
        from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid
        where s.slot_name = ${slot}`
    : await sql<{ write: string | null; flushed: string | null }[]>`
        select write_lsn::text as write, null::text as flushed from pg_stat_replication
        where application_name = ${RECEIVER_APP_NAME} order by backend_start desc limit 1`;
  const at = rows[0]?.write ?? rows[0]?.flushed;
  if (rows[0] && !rows[0].write && !hidden.said) {
    hidden.said = true;
    log({
      level: "warn",
      msg:
        "the server hides the WAL receiver's position (grant pg_read_all_stats to the service's role): the " +
        "segment being received is signed, and so recovered to, only as it ends",
    });
  }
  return at ? parseLsn(at) : null;
}
