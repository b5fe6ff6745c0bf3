import type { Command } from "../command.ts";
import { restore } from "./restore.ts";
import { create } from "./create.ts";
import { list } from "./list.ts";
import { verify } from "./verify.ts";
import { prune } from "./prune.ts";
import { check } from "./check.ts";
import { drill } from "./drill.ts";
import { keygen } from "./keygen.ts";
import { base } from "./base.ts";
import { ShinkeiError } from "../../src/errors.ts";

/** `shinkei backup` and its subcommands, one file each (as Litestream keeps cmd/litestream/<verb>.go). */
export const backupCommand: Command = {
  name: "backup",
  summary: "take, list, verify and restore backups",
  help: `Usage: shinkei backup [list|restore|verify|prune|check|drill|keygen|base] [options]

  shinkei backup                          take a backup now (pg_dump, gzip, SHA-256, manifest)
  shinkei backup --list | list            newest first: age, size, reason, row counts, check
  shinkei backup --restore | restore      restore the newest backup (not a safety copy)
  shinkei backup --restore --backup-file F
  shinkei backup restore F                restore that file (ours, or a stock pg_dump .sql/.sql.gz/.dump)
  shinkei backup verify [F] [--all]       re-read a file (default the newest): checksum and archive
  shinkei backup prune [--dry-run]        apply retention (BACKUP_KEEP_*, S3_KEEP_DAYS)
  shinkei backup check                    exit 1 when the newest good backup is older than BACKUP_MAX_AGE,
                                          failed its drill, or no drill passed within BACKUP_DRILL_MAX_AGE;
                                          with WAL_ARCHIVE=stream also when the WAL archive lags more than
                                          PITR_MAX_LAG, the slot is lost or unreserved, or WAL after the
                                          newest base backup has a gap (see shinkei pitr status)
  shinkei backup check --live             the service's health now: the database answers and, with
                                          WAL_ARCHIVE=stream, the WAL receiver is connected (its slot
                                          not lost); the container's health check
  shinkei backup drill [F]                restore F (default the newest) into a scratch database and
                                          compare every table's count and content with the manifest
  shinkei backup keygen [--output FILE]   write a new age private key (mode 0600, never overwriting;
                                          default shinkei-backup.key) and print its public key
  shinkei backup base [--verify]          a base backup now (pg_basebackup, tar, no WAL) into BACKUP_DIR/base/,
                                          for point-in-time recovery with the WAL archive (WAL_ARCHIVE=stream);
                                          --verify unpacks it and runs pg_verifybackup

Options:
  --backup-file F       the file to restore (a path, or a name in BACKUP_DIR)
  --yes                 restore without the typed confirmation (needs --confirm-database)
  --confirm-database N  the target database's name, required with --yes and without a terminal
  --no-safety-backup    restore without a pre-restore backup (only with --yes --confirm-database)
  --allow-unencrypted   restore a plain file although this host encrypts its backups
  --allow-unsigned      restore a file without a manifest although BACKUP_MANIFEST_KEY is set
  --allow-production    restore even when SHINKEI_ENV/NODE_ENV is production
  --wait                queue behind a running backup, restore or reset instead of failing
  --verify              with --list: read every file in full (slower) instead of checking sizes;
                        with base: check the new base backup with pg_verifybackup
  --all                 with verify: every backup in BACKUP_DIR
  --dry-run             with prune: show what would be deleted, delete nothing
  --output FILE         with keygen: where to write the private key
  --live                with check: only whether the service works now (see above)
  --json                machine-readable output
  -h, --help            show this help

A restore verifies the file, takes and verifies a pre-restore backup, and loads it in ONE
transaction that nothing in the file can end: the database ends exactly as in the backup, or as it
was (checked). Meta-commands (\\!, \\connect, ...) and transaction control in a file are refused.`,
  options: {
    list: { type: "boolean" },
    restore: { type: "boolean" },
    "backup-file": { type: "string" },
    yes: { type: "boolean", short: "y" },
    "no-safety-backup": { type: "boolean" },
    "confirm-database": { type: "string" },
    "allow-unencrypted": { type: "boolean" },
    "allow-unsigned": { type: "boolean" },
    "allow-production": { type: "boolean" },
    wait: { type: "boolean" },
    verify: { type: "boolean" },
    all: { type: "boolean" },
    "dry-run": { type: "boolean" },
    output: { type: "string" },
    json: { type: "boolean" },
    live: { type: "boolean" },
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
