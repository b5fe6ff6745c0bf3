import { createReadStream } from "node:fs";
import { readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import type { Log } from "../log.ts";
import { manyFilesEncryption } from "../storage/crypt.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { sealTo } from "../storage/seal.ts";
import { offsiteStore } from "../storage/stores.ts";
import { copiedTo, mirror } from "../storage/mirror.ts";
import type { BackupStore, StoreNaming } from "../storage/store.ts";
import {
  listArchive,
  recordPath,
  signWalRecord,
  spoolDir,
  WAL_IN_MEMORY_MAX,
  WAL_ZSTD_LEVEL,
  walRoot,
  updateRecord,
  type WalRecord,
} from "./archive.ts";
import { archiveTrust, copySpoolFile, readSpoolSignature } from "./trust.ts";
import { BASE_MANIFEST_SUFFIX, baseDir, listBaseBackups, updateBaseManifest, type BaseBackup } from "./base.ts";
import { parseSegment, timelineDir } from "./segments.ts";
import { startPoller } from "../service/poller.ts";

/**
 * Off-site copies of the WAL archive and base backups: one flat folder `S3_PREFIX` + `wal/`
 * (segment names carry their timeline). Only names of these shapes are listed or deleted there.
 */
const WAL_OBJECT = /^(?:[0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history)(?:\.(?:gz|zst)(?:\.age)?|\.json)$/;
const BASE_OBJECT = new RegExp(
  String.raw`^shinkei_base_\d{8}_\d{6}(?:_\d{1,3})?` +
    String.raw`(?:\.tar\.(?:gz|zst)(?:\.age)?(?:\.manifest\.json)?|\.backup_manifest\.(?:gz|zst)(?:\.age)?)$`,
);

export const walNaming: StoreNaming = {
  isOurs: (name) => WAL_OBJECT.test(name) || BASE_OBJECT.test(name),
  companions(name) {
    const wal = /^(.*)\.(?:gz|zst)(?:\.age)?$/.exec(name);
    if (WAL_OBJECT.test(name) && wal) return [`${wal[1]}.json`];
    const base = /^(shinkei_base_[0-9_]+)\.tar\.(gz|zst)(\.age)?$/.exec(name);
    if (base) return [`${base[1]}.backup_manifest.${base[2]}${base[3] ?? ""}`, name + BASE_MANIFEST_SUFFIX];
    return [];
  },
};

export const offsiteStatePath = (backupDir: string) => join(walRoot(backupDir), "offsite.json");
export type OffsiteState = { location: string; partial: { name: string; receivedAt: string; copiedAt: string } };

export function walStore(config: Config): BackupStore | undefined {
  return offsiteStore(config, { folder: "wal/", naming: walNaming });
}

/** Copy one archived WAL file, then its record naming the checked copy (kept locally only once both are up). */
export async function mirrorWalRecord(store: BackupStore, root: string, record: WalRecord): Promise<void> {
  const dir = join(root, timelineDir(record.timeline));
  await mirror(store, {
    files: [{ name: record.file, path: join(dir, record.file) }],
    record,
    writeRecord: (r) => updateRecord(root, record, (now) => ({ ...now, offsite: r.offsite })),
    recordObject: { name: `${record.name}.json`, path: recordPath(root, record.timeline, record.name) },
    describe: (copy) => ({ sizeBytes: copy.sizeBytes }),
  });
  // A segment now complete off-site makes the copy of its partial redundant.
  if (record.kind === "segment") {
    for (const ext of ["zst", "gz"])
      await store.remove(`${record.name}.partial.${ext}${record.encryption ? ".age" : ""}`).catch(() => {});
  }
}

/** Copy a base backup, the server's backup_manifest, then our manifest recording the copy. */
export async function mirrorBase(store: BackupStore, backupDir: string, base: BaseBackup): Promise<void> {
  const dir = baseDir(backupDir);
  await mirror(store, {
    files: [
      { name: base.name, path: base.path },
      { name: base.manifest.backupManifestFile, path: join(dir, base.manifest.backupManifestFile) },
    ],
    record: base.manifest,
    // A check of the base may have recorded its result while this copied.
    writeRecord: (m) => updateBaseManifest(base.path, m, (now) => ({ ...now, offsite: m.offsite })),
    recordObject: { name: base.name + BASE_MANIFEST_SUFFIX, path: base.path + BASE_MANIFEST_SUFFIX },
    describe: (copy) => ({ sizeBytes: copy.sizeBytes }),
  });
}

export type WalUploader = { stop(): Promise<void>; pass(): Promise<void> };

/**
 * Keep the off-site copy in step: every archived file and base backup not yet copied, oldest
 * first (so a pass after an outage catches up), and the segment being received, sealed like the
 * rest, at least every `partialUploadIntervalMs` while it changes.
 */
export function startWalUploader(deps: {
  store: BackupStore;
  config: Config;
  log: Log;
  segmentBytes: number;
  everyMs?: number;
}): WalUploader {
  const { store, config, log } = deps;
  const root = walRoot(config.backupDir);
  const spool = spoolDir(config.backupDir);
  const copied = new Set<string>();
  let failing = false;
  let lastPartial = { name: "", mtimeMs: 0, at: 0 };
  let chain: Promise<void> = readdir(root)
    .then((names) =>
      Promise.all(names.filter((n) => n.startsWith(".upload-")).map((n) => rm(join(root, n), { force: true }))),
    )
    .then(
      () => {},
      () => {},
    ); // sealed copies of the partial left by a crash

  const fail = (what: string, e: unknown) => {
    if (!failing)
      log({
        level: "error",
        msg: "wal off-site copy failed; retrying",
        location: store.location,
        file: what,
        error: (e as Error).message,
      });
    failing = true;
  };

  // What this host would not use is not copied either: the off-site copy holds only our own files.
  const trust = archiveTrust(config.backup.age);
  async function copyArchive(): Promise<boolean> {
    // Records of files already copied are not read again: a pass costs a directory listing.
    for (const r of await listArchive(root, copied, trust)) {
      if (copiedTo(r, store)) {
        copied.add(r.name);
        continue;
      }
      try {
        await mirrorWalRecord(store, root, r);
        copied.add(r.name);
      } catch (e) {
        fail(r.name, e);
        return false;
      }
    }
    for (const b of await listBaseBackups(config.backupDir, trust)) {
      if (copiedTo(b.manifest, store)) continue;
      try {
        await mirrorBase(store, config.backupDir, b);
        log({ level: "info", msg: "base backup copied off-site", file: b.name, location: store.location });
      } catch (e) {
        fail(b.name, e);
        return false;
      }
    }
    return true;
  }

  async function copyPartial(): Promise<boolean> {
    const names = (await readdir(spool).catch(() => [] as string[])).filter(
      (n) => n.endsWith(".partial") && parseSegment(n.slice(0, -8), deps.segmentBytes),
    );
    const name = names.sort().at(-1);
    if (!name) return true;
    const s = await stat(join(spool, name)).catch(() => null);
    if (!s) return true;
    const due = Date.now() - lastPartial.at >= config.wal.partialUploadIntervalMs;
    if (!due || (name === lastPartial.name && s.mtimeMs === lastPartial.mtimeMs)) return true;
    const key = config.backup.age?.manifestKey || undefined;
    // Not signed yet (the WAL service signs it within half a second of its first bytes), or never
    // (planted): nothing goes off-site; wal-fetch and the signer say why where it matters.
    if (key && !(await readSpoolSignature(config.backupDir, name, key))) return true;
    const encryption = await manyFilesEncryption(config.backup.age);
    const file = `${name}.zst${encryption ? ".age" : ""}`;
    const tmp = join(root, `.upload-${file}`);
    // With a key, only what the WAL service signed of it goes off-site (under a signed record), and
    // nothing of a partial planted in the spool: the copy is made as fetch makes it (trust.ts).
    const plain = join(root, `.upload-${name}`);
    try {
      await rm(tmp, { force: true });
      if (key) await copySpoolFile(config.backupDir, name, join(spool, name), plain, key);
      const path = key ? plain : join(spool, name);
      const sealed = await sealTo(
        s.size <= WAL_IN_MEMORY_MAX ? await Bun.file(path).bytes() : createReadStream(path),
        tmp,
        {
          codec: "zstd",
          level: WAL_ZSTD_LEVEL,
          age: encryption ? config.backup.age : undefined,
          encryption,
          plainHash: true,
        },
      );
      await store.put(file, tmp);
      const record: WalRecord = signWalRecord(
        {
          walRecordVersion: 1,
          name,
          kind: "partial",
          timeline: parseSegment(name.slice(0, -8), deps.segmentBytes)!.timeline,
          file,
          sizeBytes: sealed.sizeBytes,
          sha256: sealed.sha256,
          originalBytes: sealed.bytesIn,
          originalSha256: sealed.plainSha256!,
          segmentBytes: deps.segmentBytes,
          encryption,
          receivedAt: s.mtime.toISOString(),
          archivedAt: new Date().toISOString(),
        },
        config.backup.age?.manifestKey,
      );
      await writeFileAtomic(`${tmp}.json`, JSON.stringify(record, null, 2) + "\n");
      await store.put(`${name}.json`, `${tmp}.json`);
      lastPartial = { name, mtimeMs: s.mtimeMs, at: Date.now() };
      // What the off-site copy covers up to, for pitr status (the partial's record lives only there).
      await writeFileAtomic(
        offsiteStatePath(config.backupDir),
        JSON.stringify({
          location: store.location,
          partial: { name, receivedAt: record.receivedAt, copiedAt: new Date().toISOString() },
        }) + "\n",
      );
      return true;
    } catch (e) {
      fail(name, e);
      return false;
    } finally {
      await rm(plain, { force: true });
      await rm(tmp, { force: true });
      await rm(`${tmp}.json`, { force: true });
    }
  }

  const pass = () =>
    (chain = chain
      .then(async () => {
        const ok = (await copyArchive()) && (await copyPartial());
        if (ok && failing) log({ level: "info", msg: "wal off-site copy caught up", location: store.location });
        if (ok) failing = false;
      })
      .catch((e) => fail("pass", e)));

  // A slow store (an outage with timeouts) must not queue pass after pass: the poller skips a tick instead.
  const poller = startPoller(pass, deps.everyMs ?? Math.min(5000, config.wal.partialUploadIntervalMs));
  return {
    pass,
    async stop() {
      await poller.stop();
      await chain;
    },
  };
}
