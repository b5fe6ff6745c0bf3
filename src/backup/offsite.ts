import { basename, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { listLocal } from "./catalog.ts";
import { manifestPath, readManifest, writeManifest } from "./manifest.ts";
import { MANIFEST_SUFFIX } from "../storage/naming.ts";
import type { BackupStore } from "../storage/store.ts";
import { mirror } from "../storage/mirror.ts";

/**
 * Copy one backup, then its manifest recording the checked copy. The local manifest keeps that
 * record only once both are up: a copy without its manifest does not count.
 */
export async function mirrorBackup(store: BackupStore, path: string): Promise<void> {
  const name = basename(path);
  const manifest = await readManifest(path);
  if (!manifest)
    throw new ShinkeiError("STORE_FAILED", `${name} has no manifest; only complete backups are copied off-site`);
  await mirror(store, {
    files: [{ name, path }],
    record: manifest,
    writeRecord: (m) => writeManifest(path, m),
    recordObject: { name: name + MANIFEST_SUFFIX, path: manifestPath(path) },
  });
}

export type MirrorReport = { copied: string[]; failed: { name: string; error: string }[] };

/**
 * Copy every local backup never copied to the store (oldest first), so a run after an outage
 * catches up on what earlier runs could not copy. One failure does not stop the others. A copy
 * once recorded is not sent again: if it is gone, off-site retention removed it on purpose.
 */
export async function mirrorMissing(store: BackupStore, dir: string): Promise<MirrorReport> {
  const report: MirrorReport = { copied: [], failed: [] };
  for (const b of (await listLocal(dir)).reverse()) {
    if (!b.manifest || b.manifest.offsite?.[store.kind]) continue;
    try {
      await mirrorBackup(store, join(dir, b.name));
      report.copied.push(b.name);
    } catch (e) {
      report.failed.push({ name: b.name, error: (e as Error).message });
    }
  }
  return report;
}
