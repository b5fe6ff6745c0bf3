import type { Io } from "../io.ts";
import { reportError } from "../output.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { fetchViaSocket } from "../../src/pitr/walclient.ts";

/*
 * restore_command in a scratch recovery runs `shinkei pitr wal-fetch --socket PATH %f %p` once for
 * every WAL file the server asks the socket for. Starting the whole CLI (every command's modules,
 * the configuration) cost it more CPU than the fetch itself: cli/main.ts runs that exact command
 * line from here, with this module's few imports, and everything else through the full CLI.
 */

export type SocketFetch = { socket: string; name: string; target: string };

/** The command line restore_command gives (see restoreCommand), exactly; null for any other. */
export function socketFetchArgs(argv: string[]): SocketFetch | null {
  if (argv.length !== 6 || argv[0] !== "pitr" || argv[1] !== "wal-fetch" || argv[2] !== "--socket") return null;
  const [socket, name, target] = argv.slice(3) as [string, string, string];
  // Anything that could read as an option (help included) is the full parser's to judge.
  if ([socket, name, target].some((a) => a === "" || a.startsWith("-"))) return null;
  return { socket, name, target };
}

export async function walFetchViaSocket(io: Io, { socket, name, target }: SocketFetch): Promise<number> {
  try {
    await fetchViaSocket(socket, name, target);
    return 0;
  } catch (e) {
    return walFetchFailure(io, e);
  }
}

/**
 * wal-fetch's exit status for what it threw. PostgreSQL ends recovery at the first file
 * restore_command lacks (exit 1). Anything else (a store out of reach, a damaged file) must not
 * pass for "no more WAL": above 125 aborts recovery. A usage error is thrown on, to the CLI's usage.
 */
export function walFetchFailure(io: Io, e: unknown): number {
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
