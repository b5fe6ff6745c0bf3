import { join } from "node:path";
import type { Config } from "../config/index.ts";
import { ShinkeiError } from "../errors.ts";
import { sha256File } from "../storage/files.ts";
import type { BackupStore } from "../storage/store.ts";
import { copiedTo } from "../storage/mirror.ts";
import { listArchive, recordPath, signWalRecord, updateRecord, walRoot, type WalRecord } from "./archive.ts";
import { BASE_MANIFEST_SUFFIX, baseDir, listBaseBackups, signBaseManifest, updateBaseManifest } from "./base.ts";
import { timelineDir } from "./segments.ts";
import type { Untrusted } from "./trust.ts";

/**
 * `shinkei pitr sign`: sign the records of an archive written before BACKUP_MANIFEST_KEY was set
 * (or before records were signed), so this host uses them again. Run by the operator who knows the
 * archive is theirs: only unsigned records are signed, each after its file matched the SHA-256 it
 * records; a record signed with another key, or whose file does not match, is left as it is and
 * named. The off-site copy of each record signed here is replaced too.
 */
export async function signArchive(
  config: Config,
  store?: BackupStore,
): Promise<{ signed: string[]; refused: Untrusted[] }> {
  const key = config.backup.age?.manifestKey;
  if (!key) throw new ShinkeiError("CONFIG_INVALID", "BACKUP_MANIFEST_KEY is not set: there is nothing to sign with");
  const signed: string[] = [];
  const refused: Untrusted[] = [];
  const root = walRoot(config.backupDir);
  for (const r of await listArchive(root)) {
    if (r.signature !== undefined) continue;
    const file = join(root, timelineDir(r.timeline), r.file);
    if ((await sha256File(file).catch(() => "")) !== r.sha256) {
      refused.push({ file: r.name, problem: `${r.file} does not match the SHA-256 its record gives: not signed` });
      continue;
    }
    // Signed as the record is now: an off-site copy that finished meanwhile recorded itself there.
    let now: WalRecord | undefined;
    await updateRecord(root, r, (current) => {
      now = current.signature === undefined && current.sha256 === r.sha256 ? signWalRecord(current, key) : current;
      return now;
    });
    if (!now?.signature) continue;
    if (store && copiedTo(now, store)) await store.put(`${r.name}.json`, recordPath(root, r.timeline, r.name));
    signed.push(r.name);
  }
  for (const b of await listBaseBackups(config.backupDir)) {
    const m = b.manifest;
    if (m.signature !== undefined) continue;
    const ok =
      (await sha256File(b.path).catch(() => "")) === m.sha256 &&
      (await sha256File(join(baseDir(config.backupDir), m.backupManifestFile)).catch(() => "")) ===
        m.backupManifestSha256;
    if (!ok) {
      refused.push({
        file: b.name,
        problem: `${b.name} or its backup_manifest does not match the SHA-256 its manifest gives: not signed`,
      });
      continue;
    }
    // Signed as it is now: a check or an off-site copy that recorded itself meanwhile stays.
    await updateBaseManifest(b.path, m, (now) => (now.signature === undefined ? signBaseManifest(now, key) : now));
    if (store && copiedTo(m, store)) await store.put(b.name + BASE_MANIFEST_SUFFIX, b.path + BASE_MANIFEST_SUFFIX);
    signed.push(b.name);
  }
  return { signed, refused };
}
