import type { Context, Subcommand } from "../command.ts";
import { line, json, table } from "../output.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { listLocal, type LocalBackup } from "../../src/backup/catalog.ts";
import { verifyBackup } from "../../src/backup/verify.ts";
import { readDrill, type DrillResult } from "../../src/backup/drill.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { compareNewestFirst, parseBackupName } from "../../src/storage/naming.ts";
import { archiveWindow } from "../../src/wal/status.ts";
import { archiveTrust } from "../../src/wal/trust.ts";

function age(date: Date): string {
  return formatDuration(Math.max(0, Date.now() - date.getTime())) + " ago";
}

export async function list(ctx: Context): Promise<number> {
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
    else
      check =
        b.manifest.sizeBytes === b.sizeBytes ? "ok" : `FAILED: size ${b.sizeBytes}, manifest ${b.manifest.sizeBytes}`;
    rows.push({ ...b, check, location: where(b.name, true), drill: await readDrill(b.path) });
  }
  // Backups that live only off-site are listed too: restore can fetch them.
  for (const name of remote) {
    const parsed = parseBackupName(name);
    if (!parsed || backups.some((b) => b.name === name)) continue;
    rows.push({
      ...parsed,
      path: `${store!.location}${name}`,
      sizeBytes: 0,
      manifest: null,
      check: "off-site only",
      location: "s3",
      drill: null,
    });
  }
  rows.sort(compareNewestFirst);
  if (ctx.flag("json")) {
    json(
      io,
      rows.map((b) => ({
        name: b.name,
        path: b.path,
        takenAt: b.takenAt.toISOString(),
        sizeBytes: b.sizeBytes,
        reason: b.manifest?.reason ?? null,
        counts: b.manifest?.counts ?? null,
        sha256: b.manifest?.sha256 ?? null,
        check: b.check,
        location: b.location,
        drill: b.drill,
      })),
    );
    return 0;
  }
  const pitr =
    config.wal.archive === "stream"
      ? (await archiveWindow(config.backupDir, archiveTrust(config.backup.age))).window
      : null;
  const windowLine = () =>
    pitr &&
    line(
      io,
      `point-in-time window: ${
        pitr.earliest
          ? `${pitr.earliest} .. ${pitr.latest} (timeline ${pitr.timeline}); see shinkei pitr status`
          : "none yet (needs a base backup and its WAL)"
      }`,
    );
  if (rows.length === 0) {
    line(io, `no backups in ${config.backupDir}; take one with: shinkei backup`);
    windowLine();
    return 0;
  }
  const c = (b: (typeof rows)[number], t: string) => (b.manifest ? (b.manifest.counts[t] ?? 0) : "?");
  line(
    io,
    table([
      ["name", "age", "size", "reason", "users", "worlds", "stories", "beats", "where", "check", "drill"],
      ...rows.map((b) => [
        b.name,
        age(b.takenAt),
        b.location === "s3" ? "?" : formatBytes(b.sizeBytes),
        b.manifest?.reason ?? "?",
        c(b, "users"),
        c(b, "worlds"),
        c(b, "stories"),
        c(b, "story_beats"),
        b.location,
        b.check,
        b.drill ? `${b.drill.passed ? "passed" : "FAILED"} ${age(new Date(b.drill.at))}` : "-",
      ]),
    ]),
  );
  windowLine();
  return 0;
}

export const listForm: Subcommand = {
  word: "list",
  flag: "list",
  summary: "newest first: age, size, reason, row counts, check",
  options: {
    list: { type: "boolean", description: "the same as backup list" },
    verify: { type: "boolean", description: "read every file in full (slower) instead of checking sizes" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  run: list,
};
