import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import { planRetention, type Decision } from "../backup/retention.ts";
import { RECORD_MAX_BYTES, type BackupStore } from "../storage/store.ts";
import { copiedTo } from "../storage/mirror.ts";
import { listArchive, recordPath, walRoot } from "./archive.ts";
import { BASE_MANIFEST_SUFFIX, baseDir, baseManifestProblem, listBaseBackups, type BaseManifest } from "./base.ts";
import { archiveTrust } from "./trust.ts";
import { DEFAULT_SEGMENT_BYTES, parseSegment, segmentName, timelineDir } from "./segments.ts";

export type WalRange = { from: string; to: string; files: number };
export type WalPruneReport = {
  location: string;
  bases: Decision[];
  /** WAL no kept base backup needs (older than the oldest kept one's start), or null when none. */
  wal: WalRange | null;
  /** Why WAL is kept from where it is. */
  walWhy: string;
  removed: string[];
};

type Held = { name: string; segno: bigint };

/**
 * The WAL files below `keepFrom` (any timeline), ordered; history files are never removed (they are
 * tiny, and recovery asks for them).
 */
function below(files: { name: string; segmentBytes?: number }[], keepFrom: bigint | null): Held[] {
  if (keepFrom === null) return [];
  const out: Held[] = [];
  for (const f of files) {
    const seg = parseSegment(f.name.replace(/\.partial$/, ""), f.segmentBytes ?? DEFAULT_SEGMENT_BYTES);
    if (seg && seg.segno < keepFrom) out.push({ name: f.name, segno: seg.segno });
  }
  return out.sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : a.name < b.name ? -1 : 1));
}

function range(held: Held[]): WalRange | null {
  return held.length ? { from: held[0]!.name, to: held.at(-1)!.name, files: held.length } : null;
}

/** The first segment number any kept base backup needs: the oldest kept one's start. */
/**
 * Which base backups retention counts: signed ones when BACKUP_MANIFEST_KEY is set (plain ones
 * too: a host that began encrypting later still keeps and prunes its older backups). Others are
 * neither kept nor removed here.
 */
const retentionTrust = (backup: Config["backup"]) => archiveTrust(backup.age, { unencrypted: true });

/**
 * Whether a base backup can be restored as far as retention can tell: its own check did not find
 * it damaged, and every WAL segment from its start to its stop is in `held` (segment names; a
 * partial stands for its segment). One that fails is not "good": it may not hold the newest place
 * and let the last restorable base (and its WAL) go. A fresh base whose stop segment is still
 * being received is not good yet either: the one before it stays until the next run.
 */
function restorable(m: BaseManifest, held: Set<string>): boolean {
  if (m.verified?.ok === false) return false;
  const start = parseSegment(m.startSegment, m.segmentBytes)?.segno;
  const stop = parseSegment(m.stopSegment, m.segmentBytes)?.segno;
  if (start === undefined || stop === undefined || stop < start || stop - start > 1_000_000n) return false;
  for (let s = start; s <= stop; s++) if (!held.has(segmentName(m.timeline, s, m.segmentBytes))) return false;
  return true;
}

function keepFromOf(kept: BaseManifest[]): { keepFrom: bigint | null; why: string } {
  if (kept.length === 0) return { keepFrom: null, why: "no base backup: all WAL is kept" };
  const starts = kept.map((m) => ({ m, segno: parseSegment(m.startSegment, m.segmentBytes)!.segno }));
  const oldest = starts.reduce((a, b) => (b.segno < a.segno ? b : a));
  return {
    keepFrom: oldest.segno,
    why: `the oldest kept base backup ${oldest.m.file} starts in ${oldest.m.startSegment}`,
  };
}

/**
 * Local retention: base backups by BACKUP_KEEP_DAYS and the GFS keeps (never the newest, never
 * one not yet copied off-site), then the WAL no kept base backup needs. WAL not yet copied
 * off-site stays too.
 */
export async function pruneWalLocal(
  config: Config,
  options: { dryRun: boolean; offsite?: BackupStore },
): Promise<WalPruneReport> {
  // Only our own base backups count: a planted one, posing as the newest, would let every real one go.
  const bases = await listBaseBackups(config.backupDir, retentionTrust(config.backup));
  const root = walRoot(config.backupDir);
  const archived = await listArchive(root);
  const held = new Set(archived.filter((r) => r.kind !== "history").map((r) => r.name.replace(/\.partial$/, "")));
  const decisions = planRetention(
    bases.map((b) => ({
      name: b.name,
      good: restorable(b.manifest, held),
      mirrored: options.offsite ? copiedTo(b.manifest, options.offsite) : true,
      takenAt: new Date(b.manifest.startedAt),
    })),
    config.backup,
    new Date(),
    options.offsite !== undefined,
  );
  const keep = new Set(decisions.filter((d) => d.keep).map((d) => d.name));
  const { keepFrom, why } = keepFromOf(bases.filter((b) => keep.has(b.name)).map((b) => b.manifest));
  const records = archived.filter((r) => r.kind !== "history" && (!options.offsite || copiedTo(r, options.offsite)));
  const old = below(records, keepFrom);
  const removed: string[] = [];
  if (!options.dryRun) {
    for (const b of bases.filter((b) => !keep.has(b.name))) {
      for (const f of [
        b.path + BASE_MANIFEST_SUFFIX,
        b.path,
        join(baseDir(config.backupDir), b.manifest.backupManifestFile),
      ])
        await rm(f, { force: true });
      removed.push(b.name);
    }
    for (const h of old) {
      const r = records.find((x) => x.name === h.name)!;
      // The record first: a file without its record is unfinished, never mistaken for archived WAL.
      await rm(recordPath(root, r.timeline, r.name), { force: true });
      await rm(join(root, timelineDir(r.timeline), r.file), { force: true });
      removed.push(r.name);
    }
  }
  return {
    location: `${root} and ${baseDir(config.backupDir)}`,
    bases: decisions,
    wal: range(old),
    walWhy: why,
    removed,
  };
}

/**
 * Off-site retention (S3_KEEP_DAYS): base backups by their manifests there, then WAL older than
 * the oldest base backup kept there. Only our names under `wal/` are ever listed.
 */
export async function pruneWalStore(
  store: BackupStore,
  keepDays: number,
  policy: Config["backup"],
  dryRun: boolean,
): Promise<WalPruneReport> {
  const objects = await store.list();
  const names = new Set(objects.map((o) => o.name));
  const manifests: BaseManifest[] = [];
  const tmp = join(tmpdir(), `shinkei-prune-${crypto.randomUUID()}.json`);
  for (const o of objects.filter(
    (o) => /^shinkei_base_.*\.tar\.(gz|zst)(\.age)?$/.test(o.name) && names.has(o.name + BASE_MANIFEST_SUFFIX),
  )) {
    try {
      // A manifest the store fails to hand over (a reset connection, a 503) stops the run: read as
      // "no base backup", its base's WAL would go. One gone since the listing (pruned meanwhile) is skipped.
      // One too large to be a manifest stops the run too (BACKUP_CORRUPT), never read whole.
      const fetched = await store.get(o.name + BASE_MANIFEST_SUFFIX, tmp, { maxBytes: RECORD_MAX_BYTES }).then(
        () => true,
        (e: unknown) => {
          if (e instanceof ShinkeiError && e.code === "BACKUP_NOT_FOUND") return false;
          throw e;
        },
      );
      if (!fetched) continue;
      const m = (await Bun.file(tmp).json()) as BaseManifest;
      if (
        m.file === o.name &&
        parseSegment(m.startSegment, m.segmentBytes ?? DEFAULT_SEGMENT_BYTES) &&
        !Number.isNaN(Date.parse(m.startedAt)) &&
        !baseManifestProblem(m, retentionTrust(policy))
      )
        manifests.push(m);
    } catch (e) {
      if (e instanceof ShinkeiError && e.code === "STORE_FAILED") throw e;
      // unreadable: the backup counts as not good below, and so anchors nothing
    } finally {
      await rm(tmp, { force: true });
    }
  }
  const heldOffsite = new Set(
    objects
      .map((o) => /^([0-9A-F]{24})(?:\.partial)?\.(?:gz|zst)(?:\.age)?$/.exec(o.name)?.[1])
      .filter((n): n is string => n !== undefined),
  );
  const decisions = planRetention(
    manifests.map((m) => ({
      name: m.file,
      good: restorable(m, heldOffsite),
      mirrored: true,
      takenAt: new Date(m.startedAt),
    })),
    { ...policy, keepDays },
    new Date(),
    false,
  );
  const keep = new Set(decisions.filter((d) => d.keep).map((d) => d.name));
  const { keepFrom, why } = keepFromOf(manifests.filter((m) => keep.has(m.file)));
  const segmentBytes = manifests[0]?.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  const walData = objects
    .filter((o) => /^[0-9A-F]{24}(\.partial)?\.(gz|zst)(\.age)?$/.test(o.name))
    .map((o) => ({ name: o.name.replace(/\.(gz|zst)(\.age)?$/, ""), object: o.name, segmentBytes }));
  const old = below(walData, keepFrom);
  const removed: string[] = [];
  if (!dryRun) {
    for (const m of manifests.filter((m) => !keep.has(m.file))) {
      await store.remove(m.file);
      removed.push(m.file);
    }
    for (const h of old) {
      await store.remove(walData.find((w) => w.name === h.name)!.object);
      removed.push(h.name);
    }
  }
  return { location: store.location, bases: decisions, wal: range(old), walWhy: why, removed };
}
