/** A pass run every `everyMs`, never two at once. */
export type Poller = {
  /** No further passes; resolves when the one under way (if any) has finished. */
  stop(): Promise<void>;
};

/**
 * Run `pass` every `everyMs`. A tick that finds the previous pass still running is skipped, not
 * queued: a slow pass (a store timing out, a large drain) must not pile up pass after pass behind it.
 * A pass that throws is the caller's to report; here it only ends that pass.
 */
export function startPoller(pass: () => Promise<unknown>, everyMs: number): Poller {
  let current: Promise<void> | null = null;
  const timer = setInterval(() => {
    if (current) return;
    current = pass()
      .then(
        () => {},
        () => {},
      )
      .finally(() => (current = null));
  }, everyMs);
  return {
    async stop() {
      clearInterval(timer);
      await current;
    },
  };
}
