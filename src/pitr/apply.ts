import type { Sql } from "../pg/db.ts";
import { connect } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import type { AgeConfig } from "../storage/crypt.ts";
import type { BackupResult } from "../backup/dump.ts";
import { takeSafetyBackup } from "../guarded/safety.ts";
import type { LockHandle } from "../pg/db.ts";
import { tableStats, type TableStats } from "../backup/digest.ts";
import { checkDumpVersion, toolPath } from "../pg/bin.ts";
import { finished, toolEnv } from "../pg/tools.ts";
import { load } from "../backup/restore.ts";

export type ApplyStep = "safety-backup" | "restore" | "compare";

export type ApplyResult = {
  safety?: BackupResult;
  /** What the recovered instance holds, read in the snapshot pg_dump dumped. */
  expected: TableStats;
  after: TableStats;
  mismatches: string[];
  durationMs: number;
};

/**
 * A pg_dump stream that fails instead of ending when pg_dump fails: load() commits only after its
 * source ended cleanly, so a dump cut short rolls the whole load back.
 */
function checkedDump(proc: Bun.Subprocess<"ignore", "pipe", "pipe">): ReadableStream<Uint8Array> {
  const exit = finished(proc);
  const reader = proc.stdout.getReader();
  let bytes = 0;
  return new ReadableStream({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (!done) {
        bytes += value.length;
        controller.enqueue(value);
        return;
      }
      const { code, stderr } = await exit;
      if (code !== 0 || bytes === 0)
        controller.error(
          new ShinkeiError(
            "RESTORE_FAILED",
            `pg_dump of the recovered instance failed (exit ${code}): ${stderr || "no output"}`,
          ),
        );
      else controller.close();
    },
    cancel() {
      proc.kill("SIGKILL");
    },
  });
}

/**
 * The recovered state into the live database through the all-or-nothing restore: a pre-restore
 * safety backup, the scratch instance's pg_dump streamed into one transaction (load), then every
 * table's count and content digest compared with the instance's. The caller holds the maintenance lock.
 */
export async function applyRecovered(options: {
  sql: Sql;
  url: string;
  dir: string;
  scratchUrl: string;
  safetyBackup: boolean;
  age?: AgeConfig;
  lock?: LockHandle;
  onStep?: (s: ApplyStep) => void;
}): Promise<ApplyResult> {
  const started = performance.now();
  const { sql, url } = options;
  const [server] = await sql<{ num: number }[]>`select current_setting('server_version_num')::int as num`;
  const scratch = connect(options.scratchUrl, { max: 2 });
  try {
    const [source] = await scratch<{ num: number }[]>`select current_setting('server_version_num')::int as num`;
    await checkDumpVersion(Math.max(server!.num, source!.num));

    let safety: BackupResult | undefined;
    if (options.safetyBackup) {
      options.onStep?.("safety-backup");
      safety = await takeSafetyBackup({ sql, url, dir: options.dir, reason: "pre-restore", age: options.age });
    }

    options.onStep?.("restore");
    const expected = await scratch.begin("isolation level repeatable read read only", async (tx) => {
      const [snap] = await tx<{ id: string }[]>`select pg_export_snapshot() as id`;
      const proc = Bun.spawn(
        [
          toolPath("pg_dump"),
          "--format=plain",
          "--no-owner",
          "--no-privileges",
          `--snapshot=${snap!.id}`,
          "--no-password",
        ],
        {
          env: toolEnv(options.scratchUrl),
          stdin: "ignore",
          stdout: "pipe",
          stderr: "pipe",
        },
      );
      const stats = tableStats(tx);
      stats.catch(() => {});
      try {
        await load(url, checkedDump(proc), "plain", {
          lock: options.lock,
          // The dump is of the database's own past, recovered from signed base backups and WAL:
          // its code was the database's already. A safe role is still used when the database has one.
          role: { allowSuperuser: true },
        });
      } finally {
        proc.kill("SIGKILL");
      }
      return stats;
    });

    options.onStep?.("compare");
    const after = await sql.begin((tx) => tableStats(tx));
    const mismatches: string[] = [];
    for (const [table, n] of Object.entries(expected.counts)) {
      if (after.counts[table] !== n)
        mismatches.push(`${table}: expected ${n} rows, found ${after.counts[table] ?? "no table"}`);
      else if (after.digests[table] !== expected.digests[table])
        mismatches.push(`${table}: same count, different content`);
    }
    return { safety, expected, after, mismatches, durationMs: Math.round(performance.now() - started) };
  } finally {
    await scratch.end({ timeout: 2 });
  }
}
