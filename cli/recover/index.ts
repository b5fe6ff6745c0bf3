import type { Command } from "../command.ts";
import { rows } from "./rows.ts";
import { undo } from "./undo.ts";
import { history } from "./history.ts";

/** `shinkei recover`, `recover --undo RECORD`, `recover --history`, one file each. */
export const recoverCommand: Command = {
  name: "recover",
  subcommands: [rows, undo, history],
};
