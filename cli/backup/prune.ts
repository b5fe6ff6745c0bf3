import { withMaintenanceLock } from "../../src/pg/lock.ts";
import type { Context, Subcommand } from "../command.ts";
import { line, json, table } from "../output.ts";
import { leftAloneText, pruneLocal, pruneStore, RECORDS, type PruneReport } from "../../src/backup/prune.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { pruneWalLocal, pruneWalStore, type WalPruneReport } from "../../src/wal/prune.ts";
import { walStore } from "../../src/wal/offsite.ts";
import { pruneRecoveries } from "../../src/recover/stores.ts";

export async function prune(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const dryRun = ctx.flag("dry-run");
  const store = offsiteStore(config);
  const apply = async () => {
    const reports: PruneReport[] = [await pruneLocal(config, { dryRun, offsite: store })];
    if (store && config.s3)
      reports.push(
        await pruneStore(
          store,
          config.s3.keepDays,
          config.backup,
          dryRun,
          describeTarget(config.databaseUrl),
          config.backup.age?.manifestKey,
        ),
      );
    // Recovery records (RECOVER_RECORD_KEEP), listed only where there are any.
    const records = (await pruneRecoveries(config, dryRun)).filter(
      (r) => r.decisions.length > 0 || leftAloneText(r.leftAlone) !== null,
    );
    return { reports, wal: await pruneWal(config, dryRun), records };
  };
  // Deleting waits for the maintenance lock: a restore in progress keeps the backup it is reading.
  const { reports, wal, records } = dryRun
    ? await apply()
    : await withMaintenanceLock(ctx.db, "retention", apply, ctx.flag("wait"));
  if (ctx.flag("json")) return (json(io, wal.length || records.length ? [...reports, ...wal, ...records] : reports), 0);
  for (const r of reports) {
    line(io, `${r.location}${dryRun ? " (dry run: nothing deleted)" : ""}`);
    const left = leftAloneText(r.leftAlone);
    if (r.decisions.length === 0) line(io, left ? "  no backups of this database on this server" : "  no backups");
    else
      line(
        io,
        table([
          ["name", "action", "why"],
          ...r.decisions.map((d) => [d.name, d.keep ? "keep" : dryRun ? "would delete" : "deleted", d.why]),
        ]).replace(/^/gm, "  "),
      );
    if (left) line(io, `  ${left}`);
  }
  for (const r of wal) {
    line(io, `${r.location} (base backups and WAL)${dryRun ? " (dry run: nothing deleted)" : ""}`);
    if (r.bases.length)
      line(
        io,
        table([
          ["base backup", "action", "why"],
          ...r.bases.map((d) => [d.name, d.keep ? "keep" : dryRun ? "would delete" : "deleted", d.why]),
        ]).replace(/^/gm, "  "),
      );
    line(
      io,
      r.wal
        ? `  WAL ${r.wal.from} .. ${r.wal.to} (${r.wal.files} ` +
            `file(s)): ${dryRun ? "would delete" : "deleted"}; ${r.walWhy}`
        : `  WAL: nothing to delete; ${r.walWhy}`,
    );
  }
  for (const r of records) {
    line(io, `${r.location} (recovery records)${dryRun ? " (dry run: nothing deleted)" : ""}`);
    if (r.decisions.length)
      line(
        io,
        table([
          ["record", "action", "why"],
          ...r.decisions.map((d) => [d.name, d.keep ? "keep" : dryRun ? "would delete" : "deleted", d.why]),
        ]).replace(/^/gm, "  "),
      );
    else line(io, "  no recovery records of this database on this server");
    const left = leftAloneText(r.leftAlone, RECORDS);
    if (left) line(io, `  ${left}`);
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

export const pruneForm: Subcommand = {
  word: "prune",
  summary: "apply retention (BACKUP_KEEP_*, S3_KEEP_DAYS, RECOVER_RECORD_KEEP)",
  options: {
    "dry-run": { type: "boolean", description: "show what would be deleted, delete nothing" },
    wait: { type: "boolean", description: "queue behind a running backup, restore or reset instead of failing" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  run: prune,
};
