import { connectionLost } from "../src/pg/db.ts";

/** Resolve with the name of the first SIGTERM or SIGINT: long-running commands stop cleanly on either. */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
}

/**
 * How long a cancelled command has to unwind after its scratch is removed. It usually takes under
 * 300 ms; but its last queries on connections the drop cut can wait for the driver (a pool's
 * end() gives them 5 s, and a query on a reset connection may never settle), and a Ctrl-C then took
 * 5 or 10 s to return, 5 runs in 16 (test/recover.test.ts). Nothing is left for it to do once its
 * scratch is gone: what it held on the server ends with its connections.
 */
const UNWIND_MS = 2_000;

/**
 * Ctrl-C or SIGTERM during a command that works in a scratch database or instance: remove it (which
 * ends the work in it) and let the command unwind through the dispatcher, which still closes the
 * pool. A signal that comes before the scratch exists removes it the moment it does. SIGKILL leaves
 * it to the next run.
 */
export function cancelOnSignal(what = "the command") {
  const controller = new AbortController();
  let remove: (() => Promise<void>) | undefined;
  // Removing it may fail (already gone, say): nothing is left to do about that here. Once it is
  // gone the command unwinds on its own; should it be stuck on a connection the drop cut (postgres.js
  // on Bun can leave a query on a reset connection pending for good), it is ended UNWIND_MS later,
  // as a cancelled command. Unref'd: a command that unwinds in time exits at once.
  const removeQuietly = (drop: () => Promise<void>) =>
    void drop()
      .catch(() => {})
      .finally(() =>
        setTimeout(() => {
          process.stderr.write(`✖ ${what} was cancelled; its scratch database was dropped\n`);
          process.exit(130);
        }, UNWIND_MS).unref(),
      );
  // Once cancelled, the drop cuts connections still in use, and the driver can surface that later
  // as an error nobody listens for (a socket's ECONNRESET): expected, and no reason to turn a clean
  // cancellation (130) into a crash (1). Anything else still ends the process as an error.
  const late = (e: unknown) => {
    if (connectionLost(e)) return;
    process.stderr.write(`✖ ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  };
  const stop = () => {
    controller.abort();
    process.on("uncaughtException", late);
    process.on("unhandledRejection", late);
    if (remove) removeQuietly(remove);
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  return {
    signal: controller.signal,
    onScratch(drop: () => Promise<void>) {
      remove = drop;
      if (controller.signal.aborted) removeQuietly(drop);
    },
    dispose() {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
    },
  };
}
