import type { Readable, Writable } from "node:stream";

/** What a command may touch of the outside world; tests hand in their own. */
export type Io = {
  /** Where prompts read answers; process.stdin when not given. */
  stdin?: Readable;
  stdout: Writable;
  stderr: Writable;
  /** Aborting it cancels an open prompt, as Ctrl-C does. */
  signal?: AbortSignal;
  env: Record<string, string | undefined>;
  /** True when a person can answer prompts. */
  interactive: boolean;
};

export const processIo = (): Io => ({
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  interactive: Boolean(process.stdin.isTTY && process.stdout.isTTY) && !process.env.CI,
});
