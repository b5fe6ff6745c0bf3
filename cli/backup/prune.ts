import { withMaintenanceLock } from "../../src/backup/lock.ts";
import type { Context } from "../command.ts";
import { line, json, table } from "../output.ts";
import { pruneLocal, pruneStore, type PruneReport } from "../../src/backup/prune.ts";
import { offsiteStore } from "../../src/backup/stores/index.ts";

export async function prune(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const dryRun = ctx.flag("dry-run");
  const store = offsiteStore(config);
  const apply = async () => {
    const reports: PruneReport[] = [await pruneLocal(config, { dryRun, offsite: store })];
    if (store && config.s3) reports.push(await pruneStore(store, config.s3.keepDays, config.backup, dryRun));
    return reports;
  };
  // Deleting waits for the maintenance lock: a restore in progress keeps the backup it is reading.
  const reports = dryRun ? await apply() : await withMaintenanceLock(ctx.db, "retention", apply, ctx.flag("wait"));
  if (ctx.flag("json")) return json(io, reports), 0;
  for (const r of reports) {
    line(io, `${r.location}${dryRun ? " (dry run: nothing deleted)" : ""}`);
    if (r.decisions.length === 0) line(io, "  no backups");
    else line(io, table([["name", "action", "why"], ...r.decisions.map((d) => [d.name, d.keep ? "keep" : dryRun ? "would delete" : "deleted", d.why])]).replace(/^/gm, "  "));
  }
  return 0;
}
