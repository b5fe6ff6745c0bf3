import { basename } from "node:path";
import { connect } from "../pg/db.ts";
import { ShinkeiError, type ErrorCode } from "../errors.ts";
import { currentSchemaVersion } from "../pg/schema.ts";
import { tableStats } from "./digest.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { load } from "./restore.ts";
import { content } from "./decode.ts";
import { verifyBackup } from "./verify.ts";
import { withScratchDatabase } from "./scratch.ts";
import type { AgeConfig } from "../storage/crypt.ts";

export type DrillResult = {
  file: string;
  passed: boolean;
  at: string;
  durationMs: number;
  server: string;
  /** What did not match the manifest, table by table; empty when the drill passed. */
  differences: string[];
  /** What the drill could not check, without failing it. */
  notes: string[];
};

/** Scratch databases carry this prefix and a random tail: no real database is ever named so. */
/** Errors that mean the drill could not start (no privilege, no key): reported as such, not as a failed drill. */
const NOTHING_DRILLED = new Set<ErrorCode>(["PRIVILEGE_MISSING", "KEY_MISSING", "KEY_INVALID", "DECRYPT_FAILED"]);

export const SCRATCH_PREFIX = "shinkei_drill_";

export const drillPath = (backupPath: string) => `${backupPath}.drill.json`;

export async function readDrill(backupPath: string): Promise<DrillResult | null> {
  const f = Bun.file(drillPath(backupPath));
  return (await f.exists()) ? ((await f.json().catch(() => null)) as DrillResult | null) : null;
}

/**
 * Restore a backup into a new scratch database, compare every table's count and content digest
 * and the schema version with the manifest, then drop the scratch database, whatever happened.
 * One drill runs per server at a time; scratch databases left by a crashed drill are dropped first
 * (see scratch.ts).
 */
export async function runDrill(options: {
  path: string;
  serverUrl: string;
  env?: Record<string, string | undefined>;
  age?: AgeConfig;
  onScratch?: (drop: () => Promise<void>) => void;
  /** Aborted (Ctrl-C, SIGTERM): the drill stops, records nothing, and throws CANCELLED. */
  signal?: AbortSignal;
}): Promise<DrillResult> {
  const started = performance.now();
  const file = basename(options.path);
  const host = new URL(options.serverUrl);
  const server = `${host.hostname}:${host.port || 5432}`;
  const differences: string[] = [];
  const notes: string[] = [];
  try {
    const verification = await verifyBackup(options.path, { quick: true, env: options.env, age: options.age });
    const manifest = verification.manifest;
    if (!verification.ok) differences.push(...verification.problems);
    else if (!manifest) differences.push("no manifest: nothing to compare the restored data with");
    else {
      await withScratchDatabase(
        {
          serverUrl: options.serverUrl,
          prefix: SCRATCH_PREFIX,
          what: "the drill",
          onScratch: options.onScratch,
          privilegeHint:
            "Grant it (ALTER ROLE ... CREATEDB), or point DRILL_DATABASE_URL at a server where the role has it.",
        },
        // `url` logs in as the scratch's own role: the file's code (a cast, a trigger) runs on the
        // reads below too, so they never run as DATABASE_URL's role (see scratch.ts).
        async (url) => {
          const source = await content(options.path, verification.format, options.age, manifest.encryption);
          await load(url, source, verification.format, { env: options.env });
          const sql = connect(url, { max: 1 });
          try {
            const { stats, schemaVersion } = await sql.begin(async (tx) => ({
              stats: await tableStats(tx),
              schemaVersion: await currentSchemaVersion(tx),
            }));
            differences.push(...compare(manifest, stats, schemaVersion));
            if (!manifest.digests)
              notes.push("the manifest has no content digests (an older backup): only counts were compared");
          } finally {
            await sql.end({ timeout: 5 });
          }
        },
      );
    }
  } catch (e) {
    if (e instanceof ShinkeiError && NOTHING_DRILLED.has(e.code)) throw e;
    if (!options.signal?.aborted) differences.push((e as Error).message);
  }
  // A drill cut short proves nothing either way: no result is written.
  if (options.signal?.aborted)
    throw new ShinkeiError("CANCELLED", `the drill of ${file} was cancelled; its scratch database was dropped`);
  const result: DrillResult = {
    file,
    passed: differences.length === 0,
    at: new Date().toISOString(),
    durationMs: Math.round(performance.now() - started),
    server,
    differences,
    notes,
  };
  await writeFileAtomic(drillPath(options.path), JSON.stringify(result, null, 2) + "\n");
  return result;
}

function compare(
  manifest: { counts: Record<string, number>; digests?: Record<string, string>; schemaVersion: number },
  found: { counts: Record<string, number>; digests: Record<string, string> },
  schemaVersion: number,
): string[] {
  const out: string[] = [];
  if (schemaVersion !== manifest.schemaVersion)
    out.push(`schema version is ${schemaVersion}, the backup recorded ${manifest.schemaVersion}`);
  const tables = new Set([...Object.keys(manifest.counts), ...Object.keys(found.counts)]);
  for (const t of [...tables].sort()) {
    if (!(t in found.counts)) out.push(`${t}: missing after restore`);
    else if (!(t in manifest.counts)) out.push(`${t}: restored, but not in the manifest`);
    else if (found.counts[t] !== manifest.counts[t])
      out.push(`${t}: ${found.counts[t]} rows restored, the backup recorded ${manifest.counts[t]}`);
    else if (manifest.digests && manifest.digests[t] !== found.digests[t])
      out.push(`${t}: content differs from what the backup recorded`);
  }
  return out;
}
