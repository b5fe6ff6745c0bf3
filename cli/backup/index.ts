import type { Command } from "../command.ts";
import { createForm } from "./create.ts";
import { listForm } from "./list.ts";
import { restoreForm } from "./restore.ts";
import { verifyForm } from "./verify.ts";
import { pruneForm } from "./prune.ts";
import { checkForm } from "./check.ts";
import { drillForm } from "./drill.ts";
import { keygenForm } from "./keygen.ts";
import { baseForm } from "./base.ts";

/** `shinkei backup` and its subcommands, one file each (as Litestream keeps cmd/litestream/<verb>.go). */
export const backupCommand: Command = {
  name: "backup",
  subcommands: [createForm, listForm, restoreForm, verifyForm, pruneForm, checkForm, drillForm, keygenForm, baseForm],
};
