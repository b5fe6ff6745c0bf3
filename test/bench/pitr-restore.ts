/**
 * `bun run bench:pitr-restore`: the RTO of `shinkei pitr restore` against PostgreSQL's own recovery
 * of the same base backup and WAL with nothing of ours in the way (`tar -xf`, then a plain `cp`
 * restore_command over the WAL unpacked beforehand), in one run on a cluster of its own.
 *   --scale 20     pgbench scale of the database (about 15 MiB each)
 *   --wal-mib 256  WAL written after the base backup, replayed by both
 * Then `--apply` end to end (recovery, a dump of the instance, the guarded one-transaction load into
 * the live database) next to what users do today: `shinkei backup` of the same data and
 * `backup --restore` of it.
 * Writes test/bench/pitr-restore-results.json. The full size: --scale 70 --wal-mib 256.
 */
import { chmod, chown, mkdir, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import postgres from "postgres";
import { startCluster } from "../support/cluster.ts";
import { arg, benchDatabase, buildShinkei, shinkeiBin as bin, timed, writeResults } from "./tools.ts";
import { loadConfig } from "../../src/config/index.ts";
import { fetchWal } from "../../src/wal/fetch.ts";
import { listBaseBackups } from "../../src/wal/base.ts";
import { freePort, runAs } from "../../src/pg/localdb.ts";
import { parseLsn } from "../../src/wal/segments.ts";
import { RECEIVER_APP_NAME } from "../../src/wal/receiver.ts";

const scale = Number(arg("scale", "20"));
const walMiB = Number(arg("wal-mib", "256"));
const work = join("/tmp", `shinkei-bench-pitr-restore-${process.pid}`);
const backupDir = join(work, "backups");
const scratch = join(work, "tmp");
await mkdir(scratch, { recursive: true });
await chmod(work, 0o755);
await chmod(scratch, 0o755);
const as = await runAs();

await buildShinkei();
const cluster = await startCluster({
  // PostgreSQL's default segment size, as users run it (test clusters use 1 MiB).
  walSegmentMiB: 16,
  settings: { fsync: "on", synchronous_commit: "on", max_slot_wal_keep_size: "2GB" },
});
const { admin, url, sql, pgEnv } = await benchDatabase(cluster);
const env = {
  DATABASE_URL: url,
  BACKUP_DIR: backupDir,
  WAL_ARCHIVE: "stream",
  BACKUP_SCHEDULE: "0 0 1 1 *",
  BASE_BACKUP_SCHEDULE: "0 0 1 1 *",
  PITR_DRILL_SCHEDULE: "0 0 1 1 *",
  TMPDIR: scratch,
};
const service = Bun.spawn([bin, "backup-service"], {
  env: { PATH: process.env.PATH!, ...env },
  stdout: "ignore",
  stderr: "ignore",
});
try {
  await timed(["pgbench", "-i", "-q", "-s", String(scale)], { env: pgEnv });
  for (
    let i = 0;
    i < 100 && !(await sql`select 1 from pg_stat_replication where application_name = ${RECEIVER_APP_NAME}`).length;
    i++
  )
    await Bun.sleep(200);
  await timed([bin, "backup", "base"], { env: { ...env, BASE_BACKUP_START_FAST: "true" } });
  const [base] = await listBaseBackups(backupDir);
  const dbBytes = Number((await sql`select pg_database_size('bench') as n`)[0]!.n);
  console.log(
    `database ${(dbBytes / 1048576).toFixed(0)} MiB, base backup ${base!.name}; writing ${walMiB} MiB of WAL`,
  );
  while (
    parseLsn((await sql`select pg_current_wal_lsn()::text as l`)[0]!.l) - parseLsn(base!.manifest.stopLsn) <
    BigInt(walMiB) * 1048576n
  ) {
    await timed(["pgbench", "-n", "-c", "4", "-j", "2", "-T", "5"], { env: pgEnv });
  }
  const lsn = (await sql`select pg_current_wal_lsn()::text as lsn`)[0]!.lsn as string;
  for (;;) {
    const [r] = await sql`select flush_lsn >= ${lsn}::pg_lsn as ok from pg_stat_replication
        where application_name = ${RECEIVER_APP_NAME}`;
    if (r?.ok) break;
    await Bun.sleep(200);
  }
  await Bun.sleep(3000); // the archiver seals what the receiver finished
  service.kill("SIGTERM");
  await service.exited;
  const replayed = Number(parseLsn(lsn) - parseLsn(base!.manifest.stopLsn));

  // Ours: from the command to a promoted instance (its own RTO figure), then the whole command.
  const ours = await timed([bin, "pitr", "restore", "--to", "latest", "--stop", "--json"], { env });
  const out = JSON.parse(ours.stdout);

  // Baseline: the same WAL, unpacked beforehand (not timed), fed by cp; the same base backup by tar.
  const plain = join(work, "plain-wal");
  await mkdir(plain);
  const config = loadConfig(env);
  for (const tl of (await readdir(join(backupDir, "wal"))).filter((d) => /^[0-9A-F]{8}$/.test(d))) {
    for (const f of (await readdir(join(backupDir, "wal", tl))).filter((n) => /^[0-9A-F]{24}\.json$/.test(n)))
      await fetchWal(config, f.slice(0, -5), join(plain, f.slice(0, -5)));
  }
  for (const f of (await readdir(join(backupDir, "wal", "spool"))).filter((n) => n.endsWith(".partial")))
    await fetchWal(config, f.slice(0, -8), join(plain, f.slice(0, -8)));
  const dataDir = join(work, "bare", "data");
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (as.uid !== undefined) {
    await chown(join(work, "bare"), as.uid, as.gid!);
    await chown(dataDir, as.uid, as.gid!);
    await timed(["chown", "-R", "postgres:postgres", plain]);
  }
  await chmod(join(work, "bare"), 0o755);
  const port = freePort();
  const started = performance.now();
  // The base backup's own codec (zstd now, gzip from older archives), unpacked by tar alone.
  await timed(["tar", base!.path.endsWith(".zst") ? "--zstd" : "--gzip", "-xf", base!.path, "-C", dataDir]);
  await writeFile(join(dataDir, "recovery.signal"), "");
  await writeFile(
    join(dataDir, "postgresql.auto.conf"),
    `restore_command = 'cp ${plain}/%f %p'\nrecovery_target_timeline = 'latest'\nrecovery_target_action = ` +
      `'promote'\nlisten_addresses = '127.0.0.1'\nport = ${port}\nunix_socket_directories = ''\n`,
    { flag: "a" },
  );
  await timed(["chown", "-R", "postgres:postgres", dataDir]);
  await timed([
    ...as.prefix,
    join(cluster.bin, "pg_ctl"),
    "-D",
    dataDir,
    "start",
    "-w",
    "-t",
    "3600",
    "-l",
    join(work, "bare", "server.log"),
  ]);
  const bare = postgres(`postgres://postgres@127.0.0.1:${port}/bench`, { max: 1, onnotice: () => {} });
  while ((await bare`select pg_is_in_recovery() as r`)[0]!.r) await Bun.sleep(100);
  const bareMs = performance.now() - started;
  await bare.end();
  await timed([...as.prefix, join(cluster.bin, "pg_ctl"), "-D", dataDir, "stop", "-m", "immediate"]);

  const rto = out.durationMs as number;

  const confirm = ["--yes", "--confirm-database", "bench"];
  const apply = await timed([bin, "pitr", "restore", "--to", "latest", "--apply", ...confirm], { env });
  const dump = await timed([bin, "backup"], { env });
  const file = /^backup\s+(\S+)$/m.exec(dump.stdout)![1]!;
  const restore = await timed([bin, "backup", "--restore", "--allow-superuser", "--backup-file", file, ...confirm], {
    env,
  });

  const result = {
    at: new Date().toISOString(),
    database: { scale, bytes: dbBytes },
    walReplayedBytes: replayed,
    walFiles: out.walFiles,
    rto: {
      oursMs: rto,
      oursCommandMs: Math.round(ours.ms),
      bareMs: Math.round(bareMs),
      ratio: Math.round((rto / bareMs) * 100) / 100,
      goal: "<= 1.1x",
      met: rto / bareMs <= 1.1,
    },
    // Both take and verify a safety backup of the live database first, and load in one transaction.
    apply: {
      pitrApplyMs: Math.round(apply.ms),
      dumpMs: Math.round(dump.ms),
      dumpRestoreMs: Math.round(restore.ms),
      ratio: Math.round((apply.ms / restore.ms) * 100) / 100,
    },
  };
  console.log(JSON.stringify(result, null, 2));
  await writeResults(join(import.meta.dir, "pitr-restore-results.json"), JSON.stringify(result, null, 2) + "\n");
} finally {
  service.kill("SIGKILL");
  await sql.end();
  await admin.end();
  await cluster.stop();
  await rm(work, { recursive: true, force: true });
}
