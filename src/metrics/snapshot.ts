import { stat } from "node:fs/promises";
import { belongsTo, listLocal, type Owner } from "../backup/catalog.ts";
import { freshnessCounts } from "../backup/freshness.ts";
import { copiedTo } from "../storage/mirror.ts";
import type { BackupStore } from "../storage/store.ts";
import { readDrill, type DrillResult } from "../backup/drill.ts";
import { readPitrDrills, type PitrDrill } from "../pitr/drill.ts";
import { archiveWindow } from "../wal/status.ts";
import type { ArchiveTrust, Untrusted } from "../wal/trust.ts";
import { parseSegment, segmentName } from "../wal/segments.ts";
import { notFuture } from "../storage/naming.ts";

/** The configured off-site store, as far as a snapshot needs it: a copy counts only when it is there. */
export type OffsitePlace = Pick<BackupStore, "kind" | "location">;

/** One backup as the status page and the metrics see it. */
export type BackupEntry = {
  kind: "dump";
  name: string;
  takenAt: Date;
  sizeBytes: number;
  durationMs: number | null;
  reason: string | null;
  /** The manifest agrees with the file's size: what `backup check` calls good. */
  good: boolean;
  /** When the off-site copy was recorded, by store kind. */
  offsite: { kind: string; location: string; copiedAt: string }[];
  drill: DrillResult | null;
};

export type Snapshot = {
  readAt: Date;
  /** Newest first. */
  backups: BackupEntry[];
  newestGood: BackupEntry | null;
  /** The most recent drill of any local backup, passed or not. */
  lastDrill: (DrillResult & { backup: string }) | null;
  lastPassedDrill: (DrillResult & { backup: string }) | null;
  /** Backups with a manifest not yet copied to the configured store; null when there is no store. */
  offsitePending: number | null;
  /** The configured store's kind ("s3"), or null. */
  offsiteStore: string | null;
};

/**
 * Everything the ops views show, read from the backup folder alone (manifests and drill records),
 * so it needs no database and agrees with `backup --list` by construction. With `owner`, the
 * newest good backup is that database's on that server, as `backup check` reads it (freshness.ts).
 */
export async function readSnapshot(
  dir: string,
  offsite: OffsitePlace | undefined,
  { now = new Date(), owner, manifestKey }: { now?: Date; owner?: Owner; manifestKey?: string } = {},
): Promise<Snapshot> {
  const backups: BackupEntry[] = [];
  const fresh = new Set<string>();
  // Another database's backups in the folder are its own service's to copy (mirrorMissing).
  const own = new Set<string>();
  for (const b of await listLocal(dir)) {
    if (freshnessCounts(b, owner, manifestKey)) fresh.add(b.name);
    if (!owner || belongsTo(b.manifest, owner)) own.add(b.name);
    const m = b.manifest;
    backups.push({
      kind: "dump",
      name: b.name,
      takenAt: b.takenAt,
      sizeBytes: b.sizeBytes,
      durationMs: m?.durationMs ?? null,
      reason: m?.reason ?? null,
      good: m?.sizeBytes === b.sizeBytes,
      offsite: Object.entries(m?.offsite ?? {}).map(([kind, copy]) => ({
        kind,
        location: copy.location,
        copiedAt: copy.copiedAt,
      })),
      drill: await readDrill(b.path),
    });
  }
  const drills = backups.flatMap((b) =>
    b.drill && !Number.isNaN(Date.parse(b.drill.at)) ? [{ ...b.drill, backup: b.name }] : [],
  );
  drills.sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  return {
    readAt: now,
    backups,
    newestGood: backups.find((b) => b.good && fresh.has(b.name) && notFuture(b, now.getTime())) ?? null,
    lastDrill: drills[0] ?? null,
    lastPassedDrill: drills.find((d) => d.passed) ?? null,
    offsiteStore: offsite?.kind ?? null,
    offsitePending: offsite
      ? backups.filter(
          (b) =>
            b.reason !== null &&
            own.has(b.name) &&
            !b.offsite.some((o) => copiedTo({ offsite: { [o.kind]: o } }, offsite)),
        ).length
      : null,
  };
}

/** The WAL archive as the ops views show it, read from BACKUP_DIR alone like the dumps. */
export type PitrSnapshot = {
  /** The recoverable window of the newest timeline that has one. */
  window: { earliest: Date; latest: Date } | null;
  /** When the newest WAL was received: the archive's end while the app writes. */
  newestWalAt: Date | null;
  /** Missing segments, placed at the time the segment before each was received. */
  gaps: { at: Date | null; from: string; to: string; segments: number }[];
  gapsAfterNewestBase: number;
  /** Base backups and WAL files left out: unsigned, mis-signed, or plain where this host encrypts. */
  untrusted: Untrusted[];
  /** Oldest first. */
  bases: { name: string; takenAt: Date; sizeBytes: number; durationMs: number; walComplete: boolean }[];
  /** Point-in-time drills, oldest first. */
  drills: PitrDrill[];
};

export async function readPitrSnapshot(dir: string, trust: ArchiveTrust): Promise<PitrSnapshot> {
  const [w, drills] = await Promise.all([archiveWindow(dir, trust), readPitrDrills(dir)]);
  const bases = w.bases;
  const receivedAt = new Map([
    ...w.records.map((r) => [r.name, r.receivedAt] as const),
    ...w.spooled.map((f) => [f.name, f.receivedAt.toISOString()] as const),
  ]);
  const newest = Math.max(
    0,
    ...w.records.map((r) => Date.parse(r.receivedAt)),
    ...w.spooled.map((f) => f.receivedAt.getTime()),
    w.current?.receivedAt.getTime() ?? 0,
  );
  const before = (name: string) => {
    const s = parseSegment(name, w.segmentBytes);
    const at = s && receivedAt.get(segmentName(s.timeline, s.segno - 1n, w.segmentBytes));
    return at ? new Date(at) : null;
  };
  const complete = new Set(w.baseBackups.filter((b) => b.walComplete).map((b) => b.file));
  return {
    window:
      w.window.earliest && w.window.latest
        ? { earliest: new Date(w.window.earliest), latest: new Date(w.window.latest) }
        : null,
    newestWalAt: newest ? new Date(newest) : null,
    gaps: w.gaps.map((g) => ({ at: before(g.from), from: g.from, to: g.to, segments: g.segments })),
    gapsAfterNewestBase: w.gapsAfterNewestBase.length,
    untrusted: w.untrusted,
    bases: bases.map((b) => ({
      name: b.name,
      takenAt: new Date(b.manifest.finishedAt),
      sizeBytes: b.manifest.sizeBytes,
      durationMs: b.manifest.durationMs,
      walComplete: complete.has(b.name),
    })),
    drills,
  };
}

/**
 * The value of `read` at most `ttlMs` old, shared by concurrent callers: scrapes and page loads stay
 * cheap however often they come, and the folder is read by one caller at a time.
 */
export function cached<T>(read: () => Promise<T>, ttlMs = 1500): () => Promise<T> {
  let current: { at: number; value: Promise<T> } | undefined;
  return () => {
    const now = performance.now();
    if (!current || now - current.at > ttlMs) {
      const value = read();
      current = { at: now, value };
      // A failed read is not kept: the next caller tries again.
      value.catch(() => {
        if (current?.value === value) current = undefined;
      });
    }
    return current.value;
  };
}

/**
 * The folder's snapshot, read again only when it may have changed: every write shinkei makes there
 * (backup, manifest update, drill record, retention) creates or renames a file, which changes the
 * folder's mtime. Reading 1,000 manifests costs tens of milliseconds, so a scrape every second
 * must not do it each time. An edit made in place by something else shows within `maxMs`.
 */
export function folderSnapshot(
  dir: string,
  offsite: OffsitePlace | undefined,
  options: { minMs?: number; maxMs?: number; owner?: Owner; manifestKey?: string } = {},
): () => Promise<Snapshot> {
  const { minMs = 1500, maxMs = 15_000, owner, manifestKey } = options;
  let last: { readAt: number; mtime: bigint | null; value: Snapshot } | undefined;
  const mtimeOf = () =>
    stat(dir, { bigint: true }).then(
      (s) => s.mtimeNs,
      () => null,
    );
  return cached(async () => {
    const now = performance.now();
    const mtime = await mtimeOf();
    if (last && mtime !== null && mtime === last.mtime && now - last.readAt < maxMs) return last.value;
    const value = await readSnapshot(dir, offsite, { owner, manifestKey });
    last = { readAt: now, mtime, value };
    return value;
  }, minMs);
}
