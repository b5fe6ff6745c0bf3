import { join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { RECORD_MAX_BYTES, TooLargeObject, type BackupStore } from "../storage/store.ts";
import { archiveWindow } from "../wal/status.ts";
import { BASE_MANIFEST_SUFFIX, baseManifestProblem, isBaseName, type BaseManifest } from "../wal/base.ts";
import type { ArchiveTrust, Untrusted } from "../wal/trust.ts";
import { parseLsn, parseSegment } from "../wal/segments.ts";
import { readRecord, walRecordProblem } from "../wal/archive.ts";
import { rm } from "node:fs/promises";
import type { RecoveryTarget } from "./target.ts";

export type Window = { earliest: string; latest: string; timeline: number | null; source: "local" | "offsite" };
export type BaseChoice = { manifest: BaseManifest; localPath: string | null };

/**
 * The off-site window: from the oldest base backup this host trusts to the newest segment
 * reachable without a gap from the newest one, each segment's record on that way fetched and
 * checked (the first this host may not use ends the window, named), its time the object's.
 */
async function offsiteWindow(
  store: BackupStore,
  scratch: string,
  trust: ArchiveTrust,
  untrusted: Untrusted[],
): Promise<{ window: Window | null; bases: BaseManifest[] }> {
  const objects = await store.list();
  const bases: BaseManifest[] = [];
  for (const o of objects.filter(
    (o) => o.name.endsWith(BASE_MANIFEST_SUFFIX) && isBaseName(o.name.slice(0, -BASE_MANIFEST_SUFFIX.length)),
  )) {
    const local = join(scratch, o.name);
    // Too large to be a manifest: left out and named, never read whole.
    const fetched = await store.get(o.name, local, { maxBytes: RECORD_MAX_BYTES }).then(
      () => true,
      (e) => {
        if (!(e instanceof TooLargeObject)) throw e;
        untrusted.push({ file: `${store.location}/${o.name}`, problem: e.message });
        return false;
      },
    );
    if (!fetched) continue;
    const m = (await Bun.file(local)
      .json()
      .catch(() => null)) as BaseManifest | null;
    if (
      m?.baseManifestVersion !== 1 ||
      m.file !== o.name.slice(0, -BASE_MANIFEST_SUFFIX.length) ||
      !objects.some((x) => x.name === m.file)
    )
      continue;
    const problem = baseManifestProblem(m, trust);
    if (problem) untrusted.push({ file: `${store.location}/${m.file}`, problem: `${problem} (off-site copy)` });
    else bases.push(m);
  }
  bases.sort((a, b) => a.finishedAt.localeCompare(b.finishedAt));
  const newest = bases.at(-1);
  if (!newest) return { window: null, bases };
  const seg = newest.segmentBytes;
  const held = new Map<bigint, { at: Date; object: string }>();
  for (const o of objects) {
    const m = /^([0-9A-F]{24})(\.partial)?\.json$/.exec(o.name);
    const s = m ? parseSegment(m[1]!, seg) : null;
    // A whole segment's record wins over its partial's.
    if (s && s.timeline === newest.timeline && !(m![2] && held.has(s.segno)))
      held.set(s.segno, { at: o.modifiedAt, object: o.name });
  }
  const trusted = async (segno: bigint): Promise<boolean> => {
    const h = held.get(segno);
    if (!h) return false;
    // Listed, then gone: the service replaces a partial's copy with the whole segment's once that
    // is up (and deletes the partial's). Read the whole one then; a record that is simply not
    // there ends the window, as one never listed would.
    const gone = (e: unknown) => (e as { code?: string }).code === "BACKUP_NOT_FOUND";
    let local = join(scratch, h.object);
    try {
      try {
        await store.get(h.object, local, { maxBytes: RECORD_MAX_BYTES });
      } catch (e) {
        if (e instanceof TooLargeObject) {
          untrusted.push({ file: `${store.location}/${h.object}`, problem: e.message });
          return false;
        }
        if (!gone(e) || !h.object.endsWith(".partial.json")) throw e;
        await rm(local, { force: true });
        h.object = h.object.replace(/\.partial\.json$/, ".json");
        local = join(scratch, h.object);
        const found = await store.get(h.object, local, { maxBytes: RECORD_MAX_BYTES }).then(
          () => true,
          (e2) => {
            if (gone(e2)) return false;
            throw e2;
          },
        );
        if (!found) return false;
      }
      const r = await readRecord(local, h.object.slice(0, -".json".length));
      const problem = r ? walRecordProblem(r, trust) : `the record ${h.object} is not usable`;
      if (problem) untrusted.push({ file: `${store.location}/${h.object}`, problem: `${problem} (off-site copy)` });
      return problem === null;
    } finally {
      await rm(local, { force: true });
    }
  };
  // Fetched ahead in small batches: a window of a few hundred segments costs a few seconds.
  const start = parseSegment(newest.startSegment, seg)!.segno;
  let end = start - 1n;
  for (let open = true; open; ) {
    const batch: bigint[] = [];
    for (let s = end + 1n; batch.length < 16 && held.has(s); s++) batch.push(s);
    if (!batch.length) break;
    const ok = await Promise.all(batch.map(trusted));
    for (const [i, good] of ok.entries()) {
      if (!good) {
        open = false;
        break;
      }
      end = batch[i]!;
    }
  }
  if (end < start) return { window: null, bases };
  return {
    window: {
      earliest: bases[0]!.finishedAt,
      latest: held.get(end)!.at.toISOString(),
      timeline: newest.timeline,
      source: "offsite",
    },
    bases,
  };
}

/**
 * The recoverable windows (the local archive's, then the off-site copy's) and the base backups to
 * start from, local or off-site. The local window can be narrower than the off-site one (a local
 * archive lost and started again, a base backup whose WAL is not sealed yet): a target either
 * window holds is recoverable.
 */
export async function recoverySources(
  backupDir: string,
  store: BackupStore | undefined,
  scratch: string,
  trust: ArchiveTrust,
): Promise<{ windows: Window[]; bases: BaseChoice[]; untrusted: Untrusted[] }> {
  const local = await archiveWindow(backupDir, trust);
  const untrusted = [...local.untrusted];
  const bases: BaseChoice[] = local.bases.map((b) => ({ manifest: b.manifest, localPath: b.path }));
  const windows: Window[] = [];
  if (local.window.earliest && local.window.latest && local.window.earliest <= local.window.latest) {
    windows.push({
      earliest: local.window.earliest,
      latest: local.window.latest,
      timeline: local.window.timeline,
      source: "local",
    });
  }
  if (store) {
    const off = await offsiteWindow(store, scratch, trust, untrusted);
    for (const m of off.bases)
      if (!bases.some((b) => b.manifest.file === m.file)) bases.push({ manifest: m, localPath: null });
    if (off.window) windows.push(off.window);
  }
  bases.sort((a, b) => a.manifest.finishedAt.localeCompare(b.manifest.finishedAt));
  return { windows, bases, untrusted };
}

export const describeWindow = (w: Window | null) =>
  w ? `${w.earliest} .. ${w.latest}${w.source === "offsite" ? " (off-site copy)" : ""}` : "none";

/**
 * The window a target lies in (the first that holds it, for time targets; the first otherwise), and
 * the newest base backup that ends before the target. A target outside every window is refused,
 * naming the first.
 */
export function chooseBase(
  target: RecoveryTarget,
  windows: Window[],
  bases: BaseChoice[],
): { base: BaseChoice; window: Window } {
  const at = target.kind === "time" ? target.at.getTime() : null;
  const window =
    (at === null ? undefined : windows.find((w) => at >= Date.parse(w.earliest) && at <= Date.parse(w.latest))) ??
    windows[0];
  return { base: chooseIn(target, window ?? null, bases), window: window! };
}

function chooseIn(target: RecoveryTarget, window: Window | null, bases: BaseChoice[]): BaseChoice {
  if (!window || bases.length === 0) {
    throw new ShinkeiError(
      "PITR_OUT_OF_WINDOW",
      "there is nothing to recover from: no base backup with its WAL in the archive",
      {
        hint:
          "Take one with shinkei backup base (the backup service takes them on BASE_BACKUP_SCHEDULE); see " +
          "shinkei pitr status.",
      },
    );
  }
  if (target.kind === "time") {
    const at = target.at.getTime();
    if (at < Date.parse(window.earliest) || at > Date.parse(window.latest)) {
      throw new ShinkeiError(
        "PITR_OUT_OF_WINDOW",
        `${target.at.toISOString()} is ${at < Date.parse(window.earliest) ? "before" : "after"} the ` +
          `recoverable window ${describeWindow(window)}`,
        {
          hint: "Choose a moment inside the window (shinkei pitr status shows it); nothing was changed.",
          details: { window },
        },
      );
    }
    return bases.filter((b) => Date.parse(b.manifest.finishedAt) <= at).at(-1)!;
  }
  if (target.kind === "lsn") {
    const lsn = parseLsn(target.lsn);
    const fit = bases.filter((b) => parseLsn(b.manifest.stopLsn) <= lsn).at(-1);
    if (!fit) {
      throw new ShinkeiError(
        "PITR_OUT_OF_WINDOW",
        `${target.lsn} is before the end of the oldest base backup (${bases[0]!.manifest.stopLsn}); the ` +
          `recoverable window is ${describeWindow(window)}`,
        { details: { window } },
      );
    }
    return fit;
  }
  return bases.at(-1)!;
}
