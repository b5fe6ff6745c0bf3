import type { Io } from "../io.ts";
import { reportError } from "../output.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { watch } from "../../src/pitr/instance.ts";

/*
 * The watchdog every scratch recovery starts (`pitr cleanup --watch PID DIR`, see startWatchdog)
 * needs none of the rest of the CLI: cli/main.ts runs that exact command line from here.
 */

export type Watchdog = { pid: number; dir: string };

/** The command line startWatchdog gives, exactly; null for any other. */
export function watchdogArgs(argv: string[]): Watchdog | null {
  if (argv.length !== 5 || argv[0] !== "pitr" || argv[1] !== "cleanup" || argv[2] !== "--watch") return null;
  const [pid, dir] = argv.slice(3) as [string, string];
  if (!/^\d+$/.test(pid) || dir === "" || dir.startsWith("-")) return null;
  return { pid: Number(pid), dir };
}

/**
 * Watch until the instance is gone, kept, or removed after its owner died: the exit status, or
 * null for a command line the full CLI should judge (a folder that is no instance's, refused before
 * anything is done: reported there with the command's usage, as before).
 */
export async function runWatchdog(io: Io, { pid, dir }: Watchdog): Promise<number | null> {
  try {
    await watch(pid, dir);
    return 0;
  } catch (e) {
    if (e instanceof ShinkeiError && e.code === "USAGE") return null;
    return reportError(io, e);
  }
}
