import type { Context, Subcommand } from "../command.ts";
import { line, json } from "../output.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { formatBytes } from "../../src/bytes.ts";
import { listLocal, obtainBackup } from "../../src/backup/catalog.ts";
import { verifyBackup } from "../../src/backup/verify.ts";
import { describeTarget } from "../../src/pg/db.ts";
import { offsiteStore } from "../../src/storage/stores.ts";

export async function verify(ctx: Context): Promise<number> {
  const { io, config } = ctx;
  const paths = ctx.flag("all")
    ? (await listLocal(config.backupDir)).map((b) => b.path)
    : [
        // As restore and drill pick: by default, the newest backup of this database on this server.
        await obtainBackup(
          config.backupDir,
          ctx.positionals[1],
          offsiteStore(config),
          describeTarget(config.databaseUrl),
          config.backup.age?.manifestKey,
        ),
      ];
  const results = [];
  for (const path of paths) {
    const v = await verifyBackup(path, { age: config.backup.age });
    results.push(v);
    if (!ctx.flag("json")) {
      line(
        io,
        v.ok
          ? `✔ ${v.file}: ok (${formatBytes(v.sizeBytes)}, ${v.format}, ` +
              `sha256 ${v.sha256.slice(0, 12)}…${v.manifest ? "" : ", no manifest"})`
          : `✖ ${v.file}: ${v.problems.join("; ")}`,
      );
    }
  }
  if (ctx.flag("json"))
    json(
      io,
      results.map(({ manifest, ...v }) => ({ ...v, hasManifest: manifest !== null })),
    );
  const failed = results.filter((v) => !v.ok).length;
  if (failed > 0)
    throw new ShinkeiError("BACKUP_CORRUPT", `${failed} of ${paths.length} backup(s) failed verification`);
  return 0;
}

export const verifyForm: Subcommand = {
  word: "verify",
  args: { usage: "[F]", max: 1 },
  summary: "re-read a file (default this database's newest): checksum and archive",
  options: {
    all: { type: "boolean", description: "every backup in BACKUP_DIR" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  run: verify,
};
