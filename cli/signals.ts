/** Resolve with the name of the first SIGTERM or SIGINT: long-running commands stop cleanly on either. */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
}
