import type { Command, Context } from "./command.ts";
import { line, json, table } from "./output.ts";
import { activity } from "./prompts.ts";
import { restore } from "./restore.ts";
import { ShinkeiError } from "../src/errors.ts";
import { formatBytes, formatDuration } from "../src/duration.ts";
import { withMaintenanceLock } from "../src/backup/lock.ts";
import { createBackup } from "../src/backup/dump.ts";
import { listLocal, resolveBackup, type LocalBackup } from "../src/backup/catalog.ts";
import { verifyBackup } from "../src/backup/verify.ts";
import { mainTables } from "../src/state.ts";

export const backupCommand: Command = {
  name: "backup",
  summary: "take, list, verify and restore backups",
  help: `Usage: shinkei backup [list|restore|verify] [options]

  shinkei backup                          take a backup now (pg_dump, gzip, SHA-256, manifest)
  shinkei backup --list | list            newest first: age, size, reason, row counts, check
  shinkei backup --restore | restore      restore the newest backup (not a pre-restore copy)
  shinkei backup --restore --backup-file F
  shinkei backup restore F                restore that file (ours, or a stock pg_dump .sql/.sql.gz/.dump)
  shinkei backup verify [F] [--all]       re-read a file (default the newest): checksum and archive

Options:
  --backup-file F       the file to restore (a path, or a name in BACKUP_DIR)
  --yes                 restore without the typed confirmation (for scripts)
  --no-safety-backup    restore without taking a pre-restore backup first (not recommended)
  --wait                queue behind a running backup, restore or reset instead of failing
  --verify              with --list: read every file in full (slower) instead of checking sizes
  --all                 with verify: every backup in BACKUP_DIR
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
    json: { type: "boolean" },
  },
  subcommands: ["list", "restore", "verify"],
  async run(ctx) {
    const sub = ctx.positionals[0];
    if (ctx.flag("list") || sub === "list") return list(ctx);
    if (ctx.flag("restore") || sub === "restore") return restore(ctx, ctx.option("backup-file") ?? ctx.positionals[1]);
    if (sub === "verify") return verify(ctx);
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
        onProgress: (p) => spin.update(`dumping: ${formatBytes(p.bytesIn)} read, ${formatBytes(p.bytesIn / Math.max(0.001, (Date.now() - started) / 1000))}/s`),
      }), ctx.flag("wait"));
    spin.stop("backup written");
    const m = result.manifest;
    if (ctx.flag("json")) return json(io, { path: result.path, ...m }), 0;
    line(io, `backup    ${result.path}`);
    line(io, `size      ${formatBytes(m.sizeBytes)} in ${formatDuration(m.durationMs)}, sha256 ${m.sha256.slice(0, 12)}…`);
    line(io, `rows      ${mainTables.map((t) => `${t} ${m.counts[t] ?? 0}`).join(", ")}`);
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
  const rows: (LocalBackup & { check: string })[] = [];
  for (const b of backups) {
    let check: string;
    if (ctx.flag("verify")) {
      const v = await verifyBackup(b.path);
      check = v.ok ? "verified" : `FAILED: ${v.problems[0]}`;
    } else if (!b.manifest) check = "no manifest";
    else check = b.manifest.sizeBytes === b.sizeBytes ? "ok" : `FAILED: size ${b.sizeBytes}, manifest ${b.manifest.sizeBytes}`;
    rows.push({ ...b, check });
  }
  if (ctx.flag("json")) {
    json(io, rows.map((b) => ({
      name: b.name, path: b.path, takenAt: b.takenAt.toISOString(), sizeBytes: b.sizeBytes,
      reason: b.manifest?.reason ?? null, counts: b.manifest?.counts ?? null, sha256: b.manifest?.sha256 ?? null, check: b.check,
    })));
    return 0;
  }
  if (rows.length === 0) {
    line(io, `no backups in ${config.backupDir}; take one with: shinkei backup`);
    return 0;
  }
  const c = (b: (typeof rows)[number], t: string) => (b.manifest ? b.manifest.counts[t] ?? 0 : "?");
  line(io, table([
    ["name", "age", "size", "reason", "users", "worlds", "stories", "beats", "check"],
    ...rows.map((b) => [b.name, age(b.takenAt), formatBytes(b.sizeBytes), b.manifest?.reason ?? "?", c(b, "users"), c(b, "worlds"), c(b, "stories"), c(b, "story_beats"), b.check]),
  ]));
  return 0;
}

async function verify(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const paths = ctx.flag("all")
    ? (await listLocal(config.backupDir)).map((b) => b.path)
    : [await resolveBackup(config.backupDir, ctx.positionals[1])];
  let failed = 0;
  const results = [];
  for (const path of paths) {
    const v = await verifyBackup(path);
    results.push(v);
    if (!v.ok) failed++;
    if (!ctx.flag("json")) {
      line(io, v.ok ? `✔ ${v.file}: ok (${formatBytes(v.sizeBytes)}, ${v.format}, sha256 ${v.sha256.slice(0, 12)}…${v.manifest ? "" : ", no manifest"})` : `✖ ${v.file}: ${v.problems.join("; ")}`);
    }
  }
  if (ctx.flag("json")) json(io, results.map(({ manifest, ...v }) => ({ ...v, hasManifest: manifest !== null })));
  if (failed > 0) throw new ShinkeiError("BACKUP_CORRUPT", `${failed} of ${paths.length} backup(s) failed verification`);
  return 0;
}
