import * as clack from "@clack/prompts";
import type { Io } from "./io.ts";
import { ShinkeiError } from "../src/errors.ts";

/**
 * Every prompt goes through here, so every Ctrl-C is handled the same way: a CANCELLED error
 * (exit 130) before anything is changed.
 */
export async function typedConfirmation(io: Io, message: string, expected: string): Promise<void> {
  const answer = await clack.text({
    message,
    placeholder: expected,
    input: io.stdin,
    output: io.stdout,
    signal: io.signal,
  });
  if (clack.isCancel(answer)) {
    throw new ShinkeiError("CANCELLED", "cancelled: nothing was changed");
  }
  // Exactly as asked: case-sensitive, nothing trimmed, so a slip of the finger stops here.
  if (answer !== expected) {
    throw new ShinkeiError("ABORTED", `"${answer}" is not "${expected}": aborted, nothing was changed`);
  }
}

/** A spinner for people, silence for pipes; the message is throttled so redraws stay cheap. */
export function activity(io: Io, label: string) {
  if (!io.interactive) return { update() {}, stop() {}, fail() {} };
  const s = clack.spinner({ output: io.stdout });
  s.start(label);
  let last = 0;
  return {
    update(text: string) {
      const now = Date.now();
      if (now - last < 200) return;
      last = now;
      s.message(text);
    },
    stop(text?: string) {
      s.stop(text ?? label);
    },
    fail(text?: string) {
      s.error(text ?? label);
    },
  };
}

export function note(io: Io, text: string, title?: string) {
  clack.note(text, title, { output: io.stdout });
}
