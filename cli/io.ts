import type { Writable } from "node:stream";

/** What a command may touch of the outside world; tests hand in their own. */
export type Io = {
  stdout: Writable;
  stderr: Writable;
  env: Record<string, string | undefined>;
  /** True when a person can answer prompts. */
  interactive: boolean;
};

export const processIo = (): Io => ({
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  interactive: Boolean(process.stdin.isTTY && process.stdout.isTTY) && !process.env.CI,
});
