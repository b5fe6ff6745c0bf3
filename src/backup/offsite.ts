import { basename, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { belongsTo, listLocal, peekManifest, serverOf, type Owner } from "./catalog.ts";
import { manifestPath, readManifest, writeManifest } from "./manifest.ts";
import { MANIFEST_SUFFIX } from "../storage/naming.ts";
import type { BackupStore } from "../storage/store.ts";
import { copiedTo, mirror } from "../storage/mirror.ts";

/**
 * Copy one backup, then its manifest recording the checked copy. The local manifest keeps that
 * record only once both are up: a copy without its manifest does not count.
 */
export async function mirrorBackup(store: BackupStore, path: string): Promise<void> {
  const name = basename(path);
  const manifest = await readManifest(path);
  if (!manifest)
    throw new ShinkeiError("STORE_FAILED", `${name} has no manifest; only complete backups are copied off-site`);
  // A bucket prefix may be shared (another database's service, another host): a backup there under
  // this name that is not this one (two services that backed up in the same second) is never
  // written over, or that database would lose its copy. Ours (its manifest did not go up) goes again.
  const there = await peekManifest(store, name);
  if (there && there.sha256 !== manifest.sha256)
    throw new ShinkeiError(
      "STORE_FAILED",
      `${store.location}/${name} is another backup (of ${JSON.stringify(String(there.database))} on ` +
        `${serverOf(there)}, taken ${String(there.createdAt)}): it is not written over, and this one stays local`,
      {
        hint:
          "Two services back up under one S3_PREFIX and took backups in the same second: give each its own " +
          "S3_PREFIX or schedule. Nothing in the bucket was changed.",
      },
    );
  await mirror(store, {
    files: [{ name, path }],
    record: manifest,
    writeRecord: (m) => writeManifest(path, m),
    recordObject: { name: name + MANIFEST_SUFFIX, path: manifestPath(path) },
  });
}

export type MirrorReport = { copied: string[]; failed: { name: string; error: string }[] };

/**
 * Copy every local backup of `owner` never copied to the store (oldest first), so a run after an outage
 * catches up on what earlier runs could not copy. One failure does not stop the others. A copy
 * once recorded is not sent again: if it is gone, off-site retention removed it on purpose.
 */
export async function mirrorMissing(store: BackupStore, dir: string, owner: Owner): Promise<MirrorReport> {
  const report: MirrorReport = { copied: [], failed: [] };
  for (const b of (await listLocal(dir)).reverse()) {
    // Another database's backups sharing the folder are its own service's to copy, to its own place:
    // copied here too, two services with their own prefixes would copy each other's back and forth.
    if (!b.manifest || !belongsTo(b.manifest, owner) || copiedTo(b.manifest, store)) continue;
    try {
      await mirrorBackup(store, join(dir, b.name));
      report.copied.push(b.name);
    } catch (e) {
      report.failed.push({ name: b.name, error: (e as Error).message });
    }
  }
  return report;
}
