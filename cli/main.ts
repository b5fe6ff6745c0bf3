#!/usr/bin/env bun
import { socketFetchArgs, walFetchViaSocket } from "./pitr/wal-fetch-socket.ts";

/*
 * The entry point. The CLI itself (cli/run.ts: every command and what they import) is loaded only
 * when needed: restore_command's `pitr wal-fetch --socket PATH %f %p`, run once for every WAL file
 * a scratch recovery asks for, runs with the few modules it needs (see wal-fetch-socket.ts).
 */
if (import.meta.main) {
  // `shinkei backup --list | head` closes the pipe early: that is the reader's choice, not an error.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
    });
  }
  const argv = process.argv.slice(2);
  const socketFetch = socketFetchArgs(argv);
  process.exitCode = socketFetch
    ? // Only stderr and the environment are used there: not process.stdin, which costs a stream to make.
      await walFetchViaSocket(
        { stdout: process.stdout, stderr: process.stderr, env: process.env, interactive: false },
        socketFetch,
      )
    : await (await import("./run.ts")).run(argv);
}
