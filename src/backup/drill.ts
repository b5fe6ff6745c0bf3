import { basename } from "node:path";
import postgres from "postgres";
import { connect, PG } from "../db.ts";
import { ShinkeiError, type ErrorCode } from "../errors.ts";
import { currentSchemaVersion } from "../migrations/migrate.ts";
import { tableStats } from "./digest.ts";
import { writeFileAtomic } from "./files.ts";
import { load } from "./restore.ts";
import { content } from "./inspect.ts";
import { verifyBackup } from "./verify.ts";
import type { AgeConfig } from "./crypt.ts";

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
/**
 * Whether `name` is one runDrill made (prefix, its creation time in base 36, 8 hex digits), for
 * cleaning up after a crashed drill. Not LIKE: `_` is a wildcard there, and `shinkei_drill_%` also
 * matches `shinkeiXdrillXsales`. The time must be a real past moment, so a database someone named
 * `shinkei_drill_reports_1a2b3c4d` is not taken for ours either.
 */
export function isScratchName(name: string, now = Date.now()): boolean {
  const m = new RegExp(`^${SCRATCH_PREFIX}([0-9a-z]{1,12})_[0-9a-f]{8}$`).exec(name);
  const made = m ? parseInt(m[1]!, 36) : NaN;
  return made > Date.UTC(2024, 0, 1) && made <= now + 86_400_000;
}

export const drillPath = (backupPath: string) => `${backupPath}.drill.json`;

export async function readDrill(backupPath: string): Promise<DrillResult | null> {
  const f = Bun.file(drillPath(backupPath));
  return (await f.exists()) ? ((await f.json().catch(() => null)) as DrillResult | null) : null;
}

function onServer(serverUrl: string, database: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * Restore a backup into a new scratch database, compare every table's count and content digest
 * and the schema version with the manifest, then drop the scratch database, whatever happened.
 * One drill runs per server at a time; scratch databases left by a crashed drill are dropped first.
 */
export async function runDrill(options: {
  path: string;
  serverUrl: string;
  env?: Record<string, string | undefined>;
  age?: AgeConfig;
  onScratch?: (drop: () => Promise<void>) => void;
}): Promise<DrillResult> {
  const started = performance.now();
  const file = basename(options.path);
  const host = new URL(options.serverUrl);
  const server = `${host.hostname}:${host.port || 5432}`;
  const admin = postgres(onServer(options.serverUrl, "postgres"), { max: 1, onnotice: () => {}, connect_timeout: 5 });
  const differences: string[] = [];
  const notes: string[] = [];
  try {
    const verification = await verifyBackup(options.path, { quick: true, env: options.env, age: options.age });
    const manifest = verification.manifest;
    if (!verification.ok) differences.push(...verification.problems);
    else if (!manifest) differences.push("no manifest: nothing to compare the restored data with");
    else {
      const lock = await admin.reserve();
      try {
        await lock`select pg_advisory_lock(${0x5348}, hashtext('drill'))`;
        for (const { datname } of await lock`select datname from pg_database where starts_with(datname, ${SCRATCH_PREFIX})`) {
          if (isScratchName(datname)) await lock`drop database if exists ${lock(datname)} with (force)`;
        }
        const scratch = `${SCRATCH_PREFIX}${Date.now().toString(36)}_${crypto.randomUUID().slice(0, 8)}`;
        try {
          await lock`create database ${lock(scratch)}`;
        } catch (e) {
          if ((e as { code?: string }).code === PG.INSUFFICIENT_PRIVILEGE) {
            throw new ShinkeiError("PRIVILEGE_MISSING", `the drill needs the CREATEDB privilege on ${server} to make a scratch database`, {
              hint: "Grant it (ALTER ROLE ... CREATEDB), or point DRILL_DATABASE_URL at a server where the role has it.",
            });
          }
          throw e;
        }
        const drop = async () => {
          await lock`drop database if exists ${lock(scratch)} with (force)`.catch(() => {});
        };
        options.onScratch?.(drop);
        try {
          const [v] = await lock<{ num: number }[]>`select current_setting('server_version_num')::int as num`;
          const source = await content(options.path, verification.format, options.age, manifest.encryption);
          await load(onServer(options.serverUrl, scratch), source, verification.format, v!.num, { env: options.env });
          const sql = connect(onServer(options.serverUrl, scratch), { max: 1 });
          try {
            const { stats, schemaVersion } = await sql.begin(async (tx) => ({ stats: await tableStats(tx), schemaVersion: await currentSchemaVersion(tx) }));
            differences.push(...compare(manifest, stats, schemaVersion));
            if (!manifest.digests) notes.push("the manifest has no content digests (an older backup): only counts were compared");
          } finally {
            await sql.end({ timeout: 5 });
          }
        } finally {
          await drop();
        }
      } finally {
        await lock`select pg_advisory_unlock(${0x5348}, hashtext('drill'))`.catch(() => {});
        lock.release();
      }
    }
  } catch (e) {
    if (e instanceof ShinkeiError && NOTHING_DRILLED.has(e.code)) throw e;
    differences.push((e as Error).message);
  } finally {
    await admin.end({ timeout: 5 });
  }
  const result: DrillResult = { file, passed: differences.length === 0, at: new Date().toISOString(), durationMs: Math.round(performance.now() - started), server, differences, notes };
  await writeFileAtomic(drillPath(options.path), JSON.stringify(result, null, 2) + "\n");
  return result;
}

function compare(
  manifest: { counts: Record<string, number>; digests?: Record<string, string>; schemaVersion: number },
  found: { counts: Record<string, number>; digests: Record<string, string> },
  schemaVersion: number,
): string[] {
  const out: string[] = [];
  if (schemaVersion !== manifest.schemaVersion) out.push(`schema version is ${schemaVersion}, the backup recorded ${manifest.schemaVersion}`);
  const tables = new Set([...Object.keys(manifest.counts), ...Object.keys(found.counts)]);
  for (const t of [...tables].sort()) {
    if (!(t in found.counts)) out.push(`${t}: missing after restore`);
    else if (!(t in manifest.counts)) out.push(`${t}: restored, but not in the manifest`);
    else if (found.counts[t] !== manifest.counts[t]) out.push(`${t}: ${found.counts[t]} rows restored, the backup recorded ${manifest.counts[t]}`);
    else if (manifest.digests && manifest.digests[t] !== found.digests[t]) out.push(`${t}: content differs from what the backup recorded`);
  }
  return out;
}
