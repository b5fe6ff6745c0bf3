import { basename, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { listLocal } from "./catalog.ts";
import { manifestPath, readManifest, writeManifest } from "./manifest.ts";
import { MANIFEST_SUFFIX } from "./naming.ts";
import type { BackupStore } from "./stores/store.ts";

/** Copy one backup, then its manifest (which now records the checked copy). */
export async function mirrorBackup(store: BackupStore, path: string): Promise<void> {
  const name = basename(path);
  const manifest = await readManifest(path);
  if (!manifest) throw new ShinkeiError("STORE_FAILED", `${name} has no manifest; only complete backups are copied off-site`);
  const copy = await store.put(name, path);
  manifest.offsite = { ...manifest.offsite, [store.kind]: { location: store.location, ...copy, copiedAt: new Date().toISOString() } };
  await writeManifest(path, manifest);
  await store.put(name + MANIFEST_SUFFIX, manifestPath(path));
}

export type MirrorReport = { copied: string[]; failed: { name: string; error: string }[] };

/**
 * Copy every local backup the store does not hold yet (oldest first), so a run after an outage
 * catches up on what earlier runs could not copy. One failure does not stop the others.
 */
export async function mirrorMissing(store: BackupStore, dir: string): Promise<MirrorReport> {
  const remote = new Map((await store.list()).map((o) => [o.name, o.sizeBytes]));
  const report: MirrorReport = { copied: [], failed: [] };
  for (const b of (await listLocal(dir)).reverse()) {
    if (!b.manifest) continue;
    const recorded = b.manifest.offsite?.[store.kind];
    if (recorded && remote.get(b.name) === b.sizeBytes && remote.has(b.name + MANIFEST_SUFFIX)) continue;
    try {
      await mirrorBackup(store, join(dir, b.name));
      report.copied.push(b.name);
    } catch (e) {
      report.failed.push({ name: b.name, error: (e as Error).message });
    }
  }
  return report;
}
