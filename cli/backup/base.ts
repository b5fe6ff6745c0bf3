import type { Context, Subcommand } from "../command.ts";
import { line, json, warn } from "../output.ts";
import { activity } from "../prompts.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { withAdvisoryLock } from "../../src/pg/db.ts";
import { createBaseBackup, listBaseBackups } from "../../src/wal/base.ts";
import { mirrorBase, walStore } from "../../src/wal/offsite.ts";
import { verifyBaseBackup, type BaseVerification } from "../../src/wal/verify-base.ts";
import { ShinkeiError } from "../../src/errors.ts";

/** `shinkei backup base [--verify]`: one base backup now, with an immediate checkpoint. */
export async function base(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const spin = activity(io, "taking a base backup (pg_basebackup)");
  try {
    const { path, manifest: m } = await withAdvisoryLock(
      ctx.db,
      "base-backup",
      () =>
        createBaseBackup({
          sql: ctx.db,
          url: config.databaseUrl,
          backupDir: config.backupDir,
          reason: "manual",
          fast: true,
          age: config.backup.age,
        }),
      { wait: ctx.flag("wait"), what: "base backup" },
    );
    spin.stop("base backup written");
    let verified: BaseVerification | undefined;
    if (ctx.flag("verify")) {
      const checking = activity(io, "checking it (SHA-256, unpack, pg_verifybackup)");
      const base = (await listBaseBackups(config.backupDir)).find((b) => b.path === path)!;
      verified = await verifyBaseBackup(config.backupDir, base, config.backup.age);
      if (verified.ok) checking.stop("pg_verifybackup passed");
      else checking.fail("verification failed");
    }
    const store = walStore(config);
    let offsite = "not configured";
    if (store) {
      const base = (await listBaseBackups(config.backupDir)).find((b) => b.path === path);
      offsite = await mirrorBase(store, config.backupDir, base!).then(
        () => `copied to ${store.location}`,
        (e: Error) => `FAILED (${e.message}); the backup service copies it when it runs`,
      );
    }
    if (verified && !verified.ok)
      throw new ShinkeiError(
        "BACKUP_CORRUPT",
        `the base backup ${m.file} failed verification: ${verified.problems.join("; ")}`,
      );
    if (ctx.flag("json")) return (json(io, { path, ...m, verified, offsiteResult: offsite }), 0);
    line(io, `base backup  ${path}`);
    line(
      io,
      `size         ${formatBytes(m.sizeBytes)} (${formatBytes(m.originalBytes)} before compression) ` +
        `in ${formatDuration(m.durationMs)}, sha256 ${m.sha256.slice(0, 12)}…`,
    );
    if (store) (offsite.startsWith("FAILED") ? warn : line)(io, `off-site     ${offsite}`);
    line(
      io,
      `wal          timeline ${m.timeline}, ${m.startLsn} to ${m.stopLsn} (segments ${m.startSegment} ` +
        `to ${m.stopSegment})`,
    );
    return 0;
  } catch (e) {
    spin.fail("base backup failed");
    throw e;
  }
}

export const baseForm: Subcommand = {
  word: "base",
  summary: `a base backup now (pg_basebackup, tar, no WAL) into BACKUP_DIR/base/,
for point-in-time recovery with the WAL archive (WAL_ARCHIVE=stream)`,
  options: {
    verify: { type: "boolean", description: "unpack it and run pg_verifybackup" },
    wait: { type: "boolean", description: "queue behind a running backup, restore or reset instead of failing" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  run: base,
};
