import type { Context } from "./command.ts";
import { line, json, table } from "./output.ts";
import { ShinkeiError } from "../src/errors.ts";
import { formatBytes, formatDuration } from "../src/duration.ts";
import { listLocal, resolveBackup } from "../src/backup/catalog.ts";
import { verifyBackup } from "../src/backup/verify.ts";
import { pruneLocal, pruneStore, type PruneReport } from "../src/backup/prune.ts";
import { checkFreshness } from "../src/backup/freshness.ts";
import { offsiteStore } from "../src/backup/stores/index.ts";
import { runDrill } from "../src/backup/drill.ts";
import { writeIdentity } from "../src/backup/crypt.ts";
import { activity } from "./prompts.ts";
import { assertPitrHealthy, pitrStatus } from "../src/wal/status.ts";
import { pruneWalLocal, pruneWalStore, type WalPruneReport } from "../src/wal/prune.ts";
import { walStore } from "../src/wal/offsite.ts";
import { pitrDrillProblem } from "../src/pitr/drill.ts";

export async function verify(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const paths = ctx.flag("all")
    ? (await listLocal(config.backupDir)).map((b) => b.path)
    : [await resolveBackup(config.backupDir, ctx.positionals[1], offsiteStore(config))];
  const results = [];
  for (const path of paths) {
    const v = await verifyBackup(path, { age: config.backup.age });
    results.push(v);
    if (!ctx.flag("json")) {
      line(io, v.ok
        ? `✔ ${v.file}: ok (${formatBytes(v.sizeBytes)}, ${v.format}, sha256 ${v.sha256.slice(0, 12)}…${v.manifest ? "" : ", no manifest"})`
        : `✖ ${v.file}: ${v.problems.join("; ")}`);
    }
  }
  if (ctx.flag("json")) json(io, results.map(({ manifest, ...v }) => ({ ...v, hasManifest: manifest !== null })));
  const failed = results.filter((v) => !v.ok).length;
  if (failed > 0) throw new ShinkeiError("BACKUP_CORRUPT", `${failed} of ${paths.length} backup(s) failed verification`);
  return 0;
}

export async function prune(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const dryRun = ctx.flag("dry-run");
  const store = offsiteStore(config);
  const reports: PruneReport[] = [await pruneLocal(config, { dryRun, offsite: store })];
  if (store && config.s3) reports.push(await pruneStore(store, config.s3.keepDays, config.backup, dryRun));
  const wal = await pruneWal(config, dryRun);
  if (ctx.flag("json")) return json(io, wal.length ? [...reports, ...wal] : reports), 0;
  for (const r of reports) {
    line(io, `${r.location}${dryRun ? " (dry run: nothing deleted)" : ""}`);
    if (r.decisions.length === 0) line(io, "  no backups");
    else line(io, table([["name", "action", "why"], ...r.decisions.map((d) => [d.name, d.keep ? "keep" : dryRun ? "would delete" : "deleted", d.why])]).replace(/^/gm, "  "));
  }
  for (const r of wal) {
    line(io, `${r.location} (base backups and WAL)${dryRun ? " (dry run: nothing deleted)" : ""}`);
    if (r.bases.length) line(io, table([["base backup", "action", "why"], ...r.bases.map((d) => [d.name, d.keep ? "keep" : dryRun ? "would delete" : "deleted", d.why])]).replace(/^/gm, "  "));
    line(io, r.wal ? `  WAL ${r.wal.from} .. ${r.wal.to} (${r.wal.files} file(s)): ${dryRun ? "would delete" : "deleted"}; ${r.walWhy}` : `  WAL: nothing to delete; ${r.walWhy}`);
  }
  return 0;
}

/** Base backup and WAL retention, where there is a PITR archive to prune. */
async function pruneWal(config: Context["config"], dryRun: boolean): Promise<WalPruneReport[]> {
  const local = await pruneWalLocal(config, { dryRun, offsite: walStore(config) });
  if (config.wal.archive === "off" && local.bases.length === 0 && !local.wal) return [];
  const store = walStore(config);
  return store && config.s3 ? [local, await pruneWalStore(store, config.s3.keepDays, config.backup, dryRun)] : [local];
}

export async function check(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const pitr = config.wal.archive === "stream" ? await pitrStatus(ctx.db, config) : null;
  if (pitr) assertPitrHealthy(pitr, config.wal.maxLagMs);
  const pitrDrill = await pitrDrillProblem(config);
  if (pitrDrill) throw new ShinkeiError("PITR_AT_RISK", pitrDrill, { hint: "Run shinkei pitr drill (the backup service runs one on PITR_DRILL_SCHEDULE and after its first base backup)." });
  const f = await checkFreshness(config.backupDir, config.backup.maxAgeMs, config.backup.drillMaxAgeMs, config.backup.age);
  const drillAge = f.drill ? Date.now() - Date.parse(f.drill.at) : null;
  if (ctx.flag("json")) {
    const drillInfo = f.drill ? { file: f.drill.file, ageSeconds: Math.round(drillAge! / 1000) } : { skipped: "encrypted, and no key on this host" };
    return json(io, { ok: true, newest: f.newest!.name, ageSeconds: Math.round(f.ageMs! / 1000), drill: drillInfo, ...(pitr && { pitr: { window: pitr.window, lagBytes: pitr.receiver.lagBytes, lagSeconds: pitr.receiver.lagSeconds } }) }), 0;
  }
  line(io, `✔ newest good backup ${f.newest!.name} is ${formatDuration(f.ageMs!)} old (limit ${formatDuration(config.backup.maxAgeMs)})`);
  if (f.drill) line(io, `✔ ${f.drill.file} passed a restore drill ${formatDuration(drillAge!)} ago (limit ${formatDuration(config.backup.drillMaxAgeMs)})`);
  else line(io, "- drills not checked here: the backup is encrypted and this host holds no key to open it");
  if (pitr) line(io, `✔ point-in-time window ${pitr.window.earliest} .. ${pitr.window.latest}, WAL lag ${formatBytes(pitr.receiver.lagBytes)} (limit ${formatDuration(config.wal.maxLagMs)}), no gaps`);
  return 0;
}

export async function drill(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const path = await resolveBackup(config.backupDir, ctx.positionals[1], offsiteStore(config));
  const spin = activity(io, `restore drill of ${path} into a scratch database`);
  let dropScratch: (() => Promise<void>) | undefined;
  // Ctrl-C or SIGTERM mid-drill: drop the scratch database before going (SIGKILL leaves it to the next drill).
  const stop = async () => {
    await dropScratch?.();
    process.exit(130);
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    const result = await runDrill({ path, serverUrl: config.backup.drillServerUrl ?? config.databaseUrl, age: config.backup.age, onScratch: (drop) => (dropScratch = drop) });
    if (result.passed) spin.stop("drill passed");
    else spin.fail("drill failed");
    if (ctx.flag("json")) return json(io, result), result.passed ? 0 : 1;
    line(io, `${result.passed ? "✔ passed" : "✖ FAILED"}  ${result.file} restored on ${result.server} in ${formatDuration(result.durationMs)}`);
    for (const d of result.differences) line(io, `  ${d}`);
    for (const n of result.notes) line(io, `  note: ${n}`);
    if (!result.passed) throw new ShinkeiError("BACKUP_CORRUPT", `the restore drill of ${result.file} failed: ${result.differences.join("; ")}`);
    return 0;
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
}

export async function keygen(ctx: Context): Promise<number> {
  const path = ctx.option("output") ?? "shinkei-backup.key";
  const recipient = await writeIdentity(path);
  if (ctx.flag("json")) return json(ctx.io, { identityFile: path, recipient }), 0;
  line(ctx.io, `wrote the private key to ${path} (mode 0600): keep it off the backup host`);
  line(ctx.io, `public key: ${recipient}`);
  line(ctx.io, `encrypt backups with:  BACKUP_AGE_RECIPIENTS=${recipient}`);
  line(ctx.io, `restore them with:     BACKUP_AGE_IDENTITY=${path}`);
  return 0;
}
