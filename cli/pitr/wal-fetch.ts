import type { Subcommand } from "../command.ts";
import { reportError } from "../output.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { fetchWal } from "../../src/wal/fetch.ts";
import { walStore } from "../../src/wal/offsite.ts";
import { fetchViaSocket } from "../../src/pitr/walserve.ts";

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
    try {
      // A scratch recovery's restore_command asks the shinkei process that runs it (src/pitr/walserve.ts).
      // It needs no configuration of its own (the process that answers has it): none is read, as
      // restore_command runs this once per WAL file the server asks the socket for.
      const socket = ctx.option("socket");
      if (socket) await fetchViaSocket(socket, name, target);
      else {
        const { config } = ctx;
        await fetchWal(config, name, target, walStore(config), { allowUnencrypted: ctx.flag("allow-unencrypted") });
      }
      return 0;
    } catch (e) {
      // PostgreSQL ends recovery at the first file restore_command lacks (exit 1). Anything else (a
      // store out of reach, a damaged file) must not pass for "no more WAL": above 125 aborts recovery.
      if (e instanceof ShinkeiError && e.code === "USAGE") throw e;
      if (e instanceof ShinkeiError && e.code === "NOT_FOUND") {
        // The answer PostgreSQL asks for, not an error: it probes for timeline history files that
        // need not exist and for the segment after the last, at every recovery's end. One plain
        // line in its log, not a red ✖ that reads like a failed restore.
        io.stderr.write(`${e.message} (the end of the archive there)\n`);
        return 1;
      }
      reportError(io, e);
      return 126;
    }
  },
};
