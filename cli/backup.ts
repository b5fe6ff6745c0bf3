import type { Command, Context } from "./command.ts";
import { line, json, table, warn } from "./output.ts";
import { activity } from "./prompts.ts";
import { restore } from "./restore.ts";
import { check, drill, keygen, prune, verify } from "./backup-checks.ts";
import { base } from "./backup-base.ts";
import { ShinkeiError } from "../src/errors.ts";
import { formatBytes, formatDuration } from "../src/duration.ts";
import { withMaintenanceLock } from "../src/backup/lock.ts";
import { createBackup } from "../src/backup/dump.ts";
import { listLocal, type LocalBackup } from "../src/backup/catalog.ts";
import { verifyBackup } from "../src/backup/verify.ts";
import { mirrorBackup } from "../src/backup/offsite.ts";
import { readManifest } from "../src/backup/manifest.ts";
import { readDrill, type DrillResult } from "../src/backup/drill.ts";
import { offsiteStore } from "../src/backup/stores/index.ts";
import { compareNewestFirst, parseBackupName } from "../src/backup/naming.ts";
import { mainTables } from "../src/state.ts";
import { archiveWindow } from "../src/wal/status.ts";

export const backupCommand: Command = {
  name: "backup",
  summary: "take, list, verify and restore backups",
  help: `Usage: shinkei backup [list|restore|verify|prune|check|drill|keygen|base] [options]

  shinkei backup                          take a backup now (pg_dump, gzip, SHA-256, manifest)
  shinkei backup --list | list            newest first: age, size, reason, row counts, check
  shinkei backup --restore | restore      restore the newest backup (not a pre-restore copy)
  shinkei backup --restore --backup-file F
  shinkei backup restore F                restore that file (ours, or a stock pg_dump .sql/.sql.gz/.dump)
  shinkei backup verify [F] [--all]       re-read a file (default the newest): checksum and archive
  shinkei backup prune [--dry-run]        apply retention (BACKUP_KEEP_*, S3_KEEP_DAYS)
  shinkei backup check                    exit 1 when the newest good backup is older than BACKUP_MAX_AGE,
                                          failed its drill, or no drill passed within BACKUP_DRILL_MAX_AGE;
                                          with WAL_ARCHIVE=stream also when the WAL archive lags more than
                                          PITR_MAX_LAG, the slot is lost or unreserved, or WAL after the
                                          newest base backup has a gap (see shinkei pitr status)
  shinkei backup drill [F]                restore F (default the newest) into a scratch database and
                                          compare every table's count and content with the manifest
  shinkei backup keygen [--output FILE]   write a new age private key (mode 0600, never overwriting;
                                          default shinkei-backup.key) and print its public key
  shinkei backup base [--verify]          a base backup now (pg_basebackup, tar, no WAL) into BACKUP_DIR/base/,
                                          for point-in-time recovery with the WAL archive (WAL_ARCHIVE=stream);
                                          --verify unpacks it and runs pg_verifybackup

Options:
  --backup-file F       the file to restore (a path, or a name in BACKUP_DIR)
  --yes                 restore without the typed confirmation (for scripts)
  --no-safety-backup    restore without taking a pre-restore backup first (not recommended)
  --wait                queue behind a running backup, restore or reset instead of failing
  --verify              with --list: read every file in full (slower) instead of checking sizes;
                        with base: check the new base backup with pg_verifybackup
  --all                 with verify: every backup in BACKUP_DIR
  --dry-run             with prune: show what would be deleted, delete nothing
  --output FILE         with keygen: where to write the private key
  --json                machine-readable output
  -h, --help            show this help

A restore verifies the file, takes a pre-restore backup, and loads it in ONE transaction: the
database ends exactly as in the backup, or exactly as it was.`,
  options: {
    list: { type: "boolean" },
    restore: { type: "boolean" },
    "backup-file": { type: "string" },
    yes: { type: "boolean", short: "y" },
    "no-safety-backup": { type: "boolean" },
    wait: { type: "boolean" },
    verify: { type: "boolean" },
    all: { type: "boolean" },
    "dry-run": { type: "boolean" },
    output: { type: "string" },
    json: { type: "boolean" },
  },
  subcommands: ["list", "restore", "verify", "prune", "check", "drill", "keygen", "base"],
  needsDatabase: (positionals) => positionals[0] !== "keygen",
  async run(ctx) {
    const sub = ctx.positionals[0];
    if (ctx.flag("list") || sub === "list") return list(ctx);
    if (ctx.flag("restore") || sub === "restore") return restore(ctx, ctx.option("backup-file") ?? ctx.positionals[1]);
    if (sub === "verify") return verify(ctx);
    if (sub === "prune") return prune(ctx);
    if (sub === "check") return check(ctx);
    if (sub === "drill") return drill(ctx);
    if (sub === "keygen") return keygen(ctx);
    if (sub === "base") return base(ctx);
    if (ctx.option("backup-file")) throw new ShinkeiError("USAGE", "--backup-file goes with --restore");
    return create(ctx);
  },
};

async function create(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const spin = activity(io, "taking a backup");
  const started = Date.now();
  try {
    const result = await withMaintenanceLock(ctx.db, "backup", () =>
      createBackup({
        sql: ctx.db,
        url: config.databaseUrl,
        dir: config.backupDir,
        reason: "manual",
        compressionLevel: config.backup.compressionLevel,
        age: config.backup.age,
        onProgress: (p) => spin.update(`dumping: ${formatBytes(p.bytesIn)} read, ${formatBytes(p.bytesIn / Math.max(0.001, (Date.now() - started) / 1000))}/s`),
      }), ctx.flag("wait"));
    spin.stop("backup written");
    const store = offsiteStore(config);
    let offsite = "not configured";
    if (store) {
      const copying = activity(io, `copying to ${store.location}`);
      offsite = await mirrorBackup(store, result.path).then(
        () => (copying.stop("copied off-site"), `copied to ${store.location}`),
        (e: Error) => (copying.fail("off-site copy failed"), `FAILED (${e.message}); the next backup run copies it`),
      );
    }
    const m = (await readManifest(result.path)) ?? result.manifest;
    if (ctx.flag("json")) return json(io, { path: result.path, ...m, offsiteResult: offsite }), 0;
    line(io, `backup    ${result.path}`);
    line(io, `size      ${formatBytes(m.sizeBytes)} in ${formatDuration(m.durationMs)}, sha256 ${m.sha256.slice(0, 12)}…`);
    line(io, `rows      ${mainTables.map((t) => `${t} ${m.counts[t] ?? 0}`).join(", ")}`);
    if (store) (offsite.startsWith("FAILED") ? warn : line)(io, `off-site   ${offsite}`);
    line(io, `restore   shinkei backup --restore --backup-file ${result.path}`);
    return 0;
  } catch (e) {
    spin.fail("backup failed");
    throw e;
  }
}

function age(date: Date): string {
  return formatDuration(Math.max(0, Date.now() - date.getTime())) + " ago";
}

async function list(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const backups = await listLocal(config.backupDir);
  const store = offsiteStore(config);
  const remote = store ? new Set((await store.list()).map((o) => o.name)) : new Set<string>();
  const where = (name: string, local: boolean) => (local && remote.has(name) ? "local+s3" : local ? "local" : "s3");
  const rows: (LocalBackup & { check: string; location: string; drill: DrillResult | null })[] = [];
  for (const b of backups) {
    let check: string;
    if (ctx.flag("verify")) {
      const v = await verifyBackup(b.path, { age: config.backup.age });
      check = v.ok ? "verified" : `FAILED: ${v.problems[0]}`;
    } else if (!b.manifest) check = "no manifest";
    else check = b.manifest.sizeBytes === b.sizeBytes ? "ok" : `FAILED: size ${b.sizeBytes}, manifest ${b.manifest.sizeBytes}`;
    rows.push({ ...b, check, location: where(b.name, true), drill: await readDrill(b.path) });
  }
  // Backups that live only off-site are listed too: restore can fetch them.
  for (const name of remote) {
    const parsed = parseBackupName(name);
    if (!parsed || backups.some((b) => b.name === name)) continue;
    rows.push({ ...parsed, path: `${store!.location}${name}`, sizeBytes: 0, manifest: null, check: "off-site only", location: "s3", drill: null });
  }
  rows.sort(compareNewestFirst);
  if (ctx.flag("json")) {
    json(io, rows.map((b) => ({
      name: b.name, path: b.path, takenAt: b.takenAt.toISOString(), sizeBytes: b.sizeBytes,
      reason: b.manifest?.reason ?? null, counts: b.manifest?.counts ?? null, sha256: b.manifest?.sha256 ?? null, check: b.check, location: b.location, drill: b.drill,
    })));
    return 0;
  }
  const pitr = config.wal.archive === "stream" ? (await archiveWindow(config.backupDir)).window : null;
  const windowLine = () => pitr && line(io, `point-in-time window: ${pitr.earliest ? `${pitr.earliest} .. ${pitr.latest} (timeline ${pitr.timeline}); see shinkei pitr status` : "none yet (needs a base backup and its WAL)"}`);
  if (rows.length === 0) {
    line(io, `no backups in ${config.backupDir}; take one with: shinkei backup`);
    windowLine();
    return 0;
  }
  const c = (b: (typeof rows)[number], t: string) => (b.manifest ? b.manifest.counts[t] ?? 0 : "?");
  line(io, table([
    ["name", "age", "size", "reason", "users", "worlds", "stories", "beats", "where", "check", "drill"],
    ...rows.map((b) => [b.name, age(b.takenAt), b.location === "s3" ? "?" : formatBytes(b.sizeBytes), b.manifest?.reason ?? "?", c(b, "users"), c(b, "worlds"), c(b, "stories"), c(b, "story_beats"), b.location, b.check,
      b.drill ? `${b.drill.passed ? "passed" : "FAILED"} ${age(new Date(b.drill.at))}` : "-"]),
  ]));
  windowLine();
  return 0;
}
