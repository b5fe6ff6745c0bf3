import type { Command } from "../command.ts";
import { rows } from "./rows.ts";
import { undo } from "./undo.ts";
import { history } from "./history.ts";

/** `shinkei recover`, `recover --undo RECORD`, `recover --history`, one file each. */
export const recoverCommand: Command = {
  name: "recover",
  summary: "bring back one user's (or world's, or story's) rows from a backup, leaving everyone else's as they are",
  subcommands: [rows, undo, history],
};
