import type { Command } from "../command.ts";
import { up } from "./up.ts";
import { status } from "./status.ts";
import { down } from "./down.ts";

/** `shinkei migrate`, `migrate status`, `migrate down`, one file each. */
export const migrateCommand: Command = {
  name: "migrate",
  subcommands: [up, status, down],
};
