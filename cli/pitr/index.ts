import type { Command } from "../command.ts";
import { status } from "./status.ts";
import { restore } from "./restore.ts";
import { cleanup } from "./cleanup.ts";
import { sign } from "./sign.ts";
import { drill } from "./drill.ts";
import { walFetch } from "./wal-fetch.ts";

/** `shinkei pitr` and its subcommands, one file each. */
export const pitrCommand: Command = {
  name: "pitr",
  description: `With BACKUP_MANIFEST_KEY set, only base backups and WAL files whose records this host signed are
used (window, restore, drills, wal-fetch, status); on a host that encrypts, plain ones only with
--allow-unencrypted (restore, wal-fetch). sign signs the records of an archive written
before the key was set, each after its file matched its SHA-256: run it once, for an archive you
know is yours.`,
  subcommands: [status, restore, cleanup, sign, drill, walFetch],
};
