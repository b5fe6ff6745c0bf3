#!/usr/bin/env bun
import { socketFetchArgs, walFetchViaSocket } from "./pitr/wal-fetch-socket.ts";
import { runWatchdog, watchdogArgs } from "./pitr/watchdog.ts";

/*
 * The entry point. The CLI itself (cli/run.ts, which loads only the command that runs) is loaded
 * only when needed: what a scratch recovery starts, restore_command's `pitr wal-fetch --socket PATH %f %p`
 * (once for every WAL file it asks the socket for) and its watchdog, runs with the few modules it
 * needs (wal-fetch-socket.ts, watchdog.ts).
 */
if (import.meta.main) {
  // `shinkei backup --list | head` closes the pipe early: that is the reader's choice, not an error.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
    });
  }
  const argv = process.argv.slice(2);
  // Only stderr and the environment are used there: not process.stdin, which costs a stream to make.
  const io = { stdout: process.stdout, stderr: process.stderr, env: process.env, interactive: false };
  const socketFetch = socketFetchArgs(argv);
  const watchdog = watchdogArgs(argv);
  let code: number | null = null;
  if (socketFetch) code = await walFetchViaSocket(io, socketFetch);
  else if (watchdog) code = await runWatchdog(io, watchdog);
  process.exitCode = code ?? (await (await import("./run.ts")).run(argv));
}
