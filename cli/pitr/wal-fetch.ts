import type { Subcommand } from "../command.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { fetchWal } from "../../src/wal/fetch.ts";
import { walStore } from "../../src/wal/offsite.ts";
import { walFetchFailure, walFetchViaSocket } from "./wal-fetch-socket.ts";

/** `pitr wal-fetch NAME TARGET`: PostgreSQL's restore_command. */
export const walFetch: Subcommand = {
  word: "wal-fetch",
  args: { usage: "NAME TARGET", max: 2 },
  summary: "write one archived WAL file to TARGET, for restore_command",
  description: `wal-fetch is for PostgreSQL's restore_command = 'shinkei pitr wal-fetch %f %p': it writes the
archived WAL file NAME (from BACKUP_DIR, else the off-site copy) to TARGET after checking it
against its record, and exits 1 when it has no such file; 126 (which makes PostgreSQL abort
recovery rather than end it early) when the store is out of reach, a file is damaged, or its
record may not be used on this host.`,
  options: {
    socket: {
      type: "string",
      value: "PATH",
      description: "ask the shinkei process that runs a scratch recovery (its restore_command)",
    },
    "allow-unencrypted": { type: "boolean", description: "use a plain file although this host encrypts" },
  },
  needsDatabase: false,
  async run(ctx) {
    const { io } = ctx;
    const [, name, target, extra] = ctx.positionals;
    if (!name || !target || extra !== undefined)
      throw new ShinkeiError("USAGE", "wal-fetch takes a WAL file name and a target path (%f %p)");
    // A scratch recovery's restore_command asks the shinkei process that runs it (src/pitr/walserve.ts).
    // No configuration is read there; cli/main.ts runs the very command line restore_command gives
    // without the rest of the CLI (wal-fetch-socket.ts).
    const socket = ctx.option("socket");
    if (socket) return walFetchViaSocket(io, { socket, name, target });
    try {
      const { config } = ctx;
      await fetchWal(config, name, target, walStore(config), { allowUnencrypted: ctx.flag("allow-unencrypted") });
      return 0;
    } catch (e) {
      return walFetchFailure(io, e);
    }
  },
};
