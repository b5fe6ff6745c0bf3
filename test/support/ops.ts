import { readFile, writeFile } from "node:fs/promises";
import { basename } from "node:path";
import { shinkei, takeBackup } from "./cli.ts";
import { parseBackupName } from "../../src/storage/naming.ts";

export { freePort } from "../../src/pg/localdb.ts";

export type Sample = { name: string; labels: Record<string, string>; value: number };

/** The Prometheus text format's sample lines (comments skipped), strictly: a line we cannot read fails the test. */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

export function sample(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

/**
 * A backup folder with a history: an older backup copied off-site whose drill passed, then a newer
 * one not copied whose drill failed (its manifest claims rows the database never had, as a tool that
 * rewrote the manifest would). Everything through the compiled binary, as an operator does it.
 */
export async function backupHistory(env: Record<string, string>, offsiteEnv: Record<string, string>) {
  const passed = await takeBackup({ ...env, ...offsiteEnv });
  const drillA = await shinkei(["backup", "drill", passed], env);
  if (drillA.code !== 0) throw new Error(`drill of ${passed} failed: ${drillA.stderr}`);
  // The newer backup's name carries a later second than the older one's. The drill usually took
  // longer than that already; otherwise wait only until the clock leaves the older name's second.
  const passedSecond = parseBackupName(basename(passed))!.takenAt.getTime();
  await Bun.sleep(Math.max(0, passedSecond + 1000 - Date.now()));
  const failed = await takeBackup(env);
  if (parseBackupName(basename(failed))!.takenAt.getTime() <= passedSecond)
    throw new Error(`${basename(failed)} is named in the same second as ${basename(passed)}`);
  const manifest = JSON.parse(await readFile(`${failed}.manifest.json`, "utf8"));
  manifest.counts.users += 40;
  await writeFile(`${failed}.manifest.json`, JSON.stringify(manifest, null, 2));
  const drillB = await shinkei(["backup", "drill", failed], env);
  if (drillB.code === 0) throw new Error(`the drill of a tampered manifest passed: ${drillB.stdout}`);
  return { passed: basename(passed), failed: basename(failed) };
}
