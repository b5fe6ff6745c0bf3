import type { Context, Subcommand } from "../command.ts";
import { line, json, warn } from "../output.ts";
import { activity } from "../prompts.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { withMaintenanceLock } from "../../src/pg/lock.ts";
import { createBackup } from "../../src/backup/dump.ts";
import { mirrorBackup } from "../../src/backup/offsite.ts";
import { readManifest } from "../../src/backup/manifest.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { mainTables } from "../../src/pg/tables.ts";

export async function create(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const spin = activity(io, "taking a backup");
  const started = Date.now();
  try {
    const result = await withMaintenanceLock(
      ctx.db,
      "backup",
      () =>
        createBackup({
          sql: ctx.db,
          url: config.databaseUrl,
          dir: config.backupDir,
          reason: "manual",
          compressionLevel: config.backup.compressionLevel,
          age: config.backup.age,
          onProgress: (p) =>
            spin.update(
              `dumping: ${formatBytes(p.bytesIn)} ` +
                `read, ${formatBytes(p.bytesIn / Math.max(0.001, (Date.now() - started) / 1000))}/s`,
            ),
        }),
      ctx.flag("wait"),
    );
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
    if (ctx.flag("json")) return (json(io, { path: result.path, ...m, offsiteResult: offsite }), 0);
    line(io, `backup    ${result.path}`);
    line(
      io,
      `size      ${formatBytes(m.sizeBytes)} in ${formatDuration(m.durationMs)}, sha256 ${m.sha256.slice(0, 12)}…`,
    );
    line(io, `rows      ${mainTables.map((t) => `${t} ${m.counts[t] ?? 0}`).join(", ")}`);
    if (store) (offsite.startsWith("FAILED") ? warn : line)(io, `off-site   ${offsite}`);
    line(
      io,
      `restore   shinkei backup --restore ` +
        `--backup-file ${result.path}${config.environment === "production" ? " --allow-production" : ""}`,
    );
    return 0;
  } catch (e) {
    spin.fail("backup failed");
    throw e;
  }
}

export const createForm: Subcommand = {
  default: true,
  summary: "take a backup now (pg_dump, gzip, SHA-256, manifest)",
  options: {
    wait: { type: "boolean", description: "queue behind a running backup, restore or reset instead of failing" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  run: create,
};
