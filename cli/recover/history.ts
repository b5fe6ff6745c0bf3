import type { Subcommand } from "../command.ts";
import { json } from "../output.ts";
import { showHistory } from "./view.ts";
import { history as readHistory } from "../../src/recover/record.ts";
import { recoveryStates } from "../../src/recover/undo.ts";
import { describeTarget } from "../../src/pg/db.ts";

/** `recover --history`: the recoveries applied, from their records, each with its state now. */
export const history: Subcommand = {
  flag: "history",
  summary: "list the recoveries applied (from their records in BACKUP_DIR)",
  options: {
    history: { type: "boolean", description: "list the recoveries applied (from their records in BACKUP_DIR)" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  async run(ctx) {
    const { io, config } = ctx;
    // One BACKUP_DIR may serve two databases (as backups do): only this database's recoveries are its history.
    const database = describeTarget(config.databaseUrl).database;
    const records = (await readHistory(config.backupDir)).filter((r) => r.database === database);
    const states = await recoveryStates(
      ctx.db,
      records.flatMap((r) => (r.id ? [r.id] : [])),
    );
    const listed = records.map((r) => ({
      ...r,
      state: r.id ? (states.get(r.id) ?? "not recorded here") : "no row-level undo",
    }));
    return ctx.flag("json") ? (json(io, listed), 0) : (showHistory(io, listed), 0);
  },
};
