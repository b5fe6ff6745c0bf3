import type { Command } from "../command.ts";
import { show } from "./show.ts";
import { watchForm } from "./watch.ts";

/** `shinkei status` and `status --watch`, one file each. */
export const statusCommand: Command = {
  name: "status",
  subcommands: [show, watchForm],
};
