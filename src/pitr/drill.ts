import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import { connect, type Sql } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import type { Log } from "../log.ts";
import { tableStats, type TableStats } from "../backup/digest.ts";
import { writeFileAtomic } from "../storage/files.ts";
import { userTables } from "../pg/tables.ts";
import { RECEIVER_APP_NAME } from "../wal/receiver.ts";
import { walStore } from "../wal/offsite.ts";
import { servesThrough } from "../wal/fetch.ts";
import { recoverTo } from "./recover.ts";

export type PitrDrill = {
  at: string;
  passed: boolean;
  restorePoint: string;
  lsn: string | null;
  base: string | null;
  /** From the start of the recovery to a promoted instance answering queries. */
  rtoMs: number | null;
  durationMs: number;
  walFiles: number;
  differences: string[];
};

const drillsFile = (backupDir: string) => join(backupDir, "pitr", "drills.json");
const KEEP = 20;

/** The recorded PITR drills, newest last. */
export async function readPitrDrills(backupDir: string): Promise<PitrDrill[]> {
  const list = JSON.parse(await readFile(drillsFile(backupDir), "utf8").catch(() => "[]")) as unknown;
  return Array.isArray(list)
    ? (list as PitrDrill[]).filter((d) => d && typeof d.at === "string" && typeof d.passed === "boolean")
    : [];
}

async function record(backupDir: string, d: PitrDrill): Promise<void> {
  await mkdir(join(backupDir, "pitr"), { recursive: true, mode: 0o700 });
  const all = [...(await readPitrDrills(backupDir)), d].slice(-KEEP);
  await writeFileAtomic(drillsFile(backupDir), JSON.stringify(all, null, 2) + "\n");
}

/**
 * A named restore point and the counts and digests of exactly its state. Every public table is
 * locked against writes (SHARE mode) for a moment: no write to them is in flight, none starts. In
 * that moment one transaction exports its snapshot, a second adopts it, and the restore point is
 * written; then the locks go. The second transaction reads the tables in that snapshot, which
 * holds every commit before the restore point's WAL record and none after: what recovery to the
 * restore point replays.
 */
export async function markRestorePoint(sql: Sql, name: string): Promise<{ lsn: string; stats: TableStats }> {
  const reader = await sql.reserve();
  try {
    let lsn = "";
    const locker = await sql.reserve();
    try {
      await locker`begin isolation level repeatable read`;
      await locker`set local lock_timeout = '10s'`;
      const tables = await userTables(locker);
      if (tables.length) await locker.unsafe(`lock table ${tables.map((t) => t.qualified).join(", ")} in share mode`);
      const [snap] = await locker<{ id: string }[]>`select pg_export_snapshot() as id`;
      await reader`begin isolation level repeatable read read only`;
      await reader.unsafe(`set transaction snapshot '${snap!.id.replace(/'/g, "")}'`);
      lsn = (await locker<{ lsn: string }[]>`select pg_create_restore_point(${name})::text as lsn`)[0]!.lsn;
      await locker`commit`;
    } catch (e) {
      await locker`rollback`.catch(() => {});
      throw e;
    } finally {
      locker.release();
    }
    const stats = await tableStats(reader);
    await reader`commit`;
    return { lsn, stats };
  } catch (e) {
    await reader`rollback`.catch(() => {});
    throw e;
  } finally {
    reader.release();
  }
}

export function compareStats(expected: TableStats, found: TableStats): string[] {
  const out: string[] = [];
  for (const t of [...new Set([...Object.keys(expected.counts), ...Object.keys(found.counts)])].sort()) {
    if (!(t in found.counts)) out.push(`${t}: missing after recovery`);
    else if (!(t in expected.counts)) out.push(`${t}: recovered, but not there at the restore point`);
    else if (found.counts[t] !== expected.counts[t])
      out.push(`${t}: ${found.counts[t]} rows recovered, ${expected.counts[t]} at the restore point`);
    else if (found.digests[t] !== expected.digests[t]) out.push(`${t}: content differs from the restore point's`);
  }
  return out;
}

/**
 * A PITR drill: restore point and its state recorded, the receiver given time to hold it, a
 * scratch instance recovered to it from the archive, every table compared, the instance removed
 * (also on failure; a watchdog removes it if this process is killed), the result recorded.
 */
export async function runPitrDrill(deps: {
  sql: Sql;
  config: Config;
  onStep?: (m: string) => void;
  /** The service's log: what the recovery's cleanup could not do goes there. */
  log?: Log;
}): Promise<PitrDrill> {
  const { sql, config } = deps;
  const started = performance.now();
  const at = new Date();
  const stamp = at.toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
  const restorePoint = `shinkei_drill_${stamp}_${crypto.randomUUID().slice(0, 6)}`;
  const result: PitrDrill = {
    at: at.toISOString(),
    passed: false,
    restorePoint,
    lsn: null,
    base: null,
    rtoMs: null,
    durationMs: 0,
    walFiles: 0,
    differences: [],
  };
  try {
    deps.onStep?.(`creating restore point ${restorePoint} and reading every table's count and digest at it`);
    const mark = await markRestorePoint(sql, restorePoint);
    result.lsn = mark.lsn;
    // Recovery can only reach what the archive serves: wait for the receiver to flush past the
    // restore point and, with BACKUP_MANIFEST_KEY, for the WAL service to sign that far (at an
    // exact segment end the file named is the one before, and must be whole: offset 0).
    const [end] = await sql<{ file: string; offset: number }[]>`
      select file_name as file, file_offset as offset from pg_walfile_name_offset(${mark.lsn}::pg_lsn)`;
    const deadline = Date.now() + 60_000;
    for (;;) {
      const [r] = await sql<{ ok: boolean }[]>`select flush_lsn >= ${mark.lsn}::pg_lsn as ok from pg_stat_replication
        where application_name = ${RECEIVER_APP_NAME} order by backend_start desc limit 1`;
      if (r?.ok && (await servesThrough(config, end!.file, Number(end!.offset)))) break;
      if (Date.now() > deadline)
        throw new ShinkeiError(
          "PITR_AT_RISK",
          r?.ok
            ? `the WAL service has not signed the restore point's WAL (${mark.lsn}, ${end!.file}) within a minute`
            : `the WAL receiver has not received the restore point (${mark.lsn}) within a minute`,
        );
      await Bun.sleep(200);
    }
    const recovery = await recoverTo({
      config,
      target: { kind: "name", name: restorePoint },
      store: walStore(config),
      keep: false,
      onStep: deps.onStep,
      log: deps.log,
    });
    try {
      result.base = recovery.base;
      result.rtoMs = recovery.durationMs;
      result.walFiles = recovery.walFiles.length;
      const scratch = connect(recovery.url!, { max: 1 });
      try {
        result.differences = compareStats(mark.stats, await scratch.begin((tx) => tableStats(tx)));
      } finally {
        await scratch.end({ timeout: 2 });
      }
    } finally {
      await recovery.stop();
    }
  } catch (e) {
    result.differences.push((e as Error).message);
  }
  result.passed = result.differences.length === 0;
  result.durationMs = Math.round(performance.now() - started);
  await record(config.backupDir, result);
  return result;
}

/** `backup check`'s rule: with the archive on, a PITR drill must have passed within BACKUP_DRILL_MAX_AGE. */
export async function pitrDrillProblem(config: Config): Promise<string | null> {
  if (config.wal.archive !== "stream") return null;
  const passed = (await readPitrDrills(config.backupDir)).filter((d) => d.passed).at(-1);
  if (!passed) return "no point-in-time recovery drill has passed yet (shinkei pitr drill)";
  const age = Date.now() - Date.parse(passed.at);
  return age > config.backup.drillMaxAgeMs
    ? `the last passed point-in-time recovery drill is from ${passed.at}, older than BACKUP_DRILL_MAX_AGE`
    : null;
}
