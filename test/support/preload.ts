import { plugin } from "bun";
import { afterAll, expect } from "bun:test";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Real databases, servers and processes: bun's 5 s default is too tight on a busy 2-core machine. */
const TEST_TIMEOUT_MS = 60_000;

/*
 * One temp folder per test process, removed after its last test: everything the tests, the
 * programs they start (the binary gets this TMPDIR, see support/cli.ts) and the clusters they make
 * put in the temp directory goes in it, so a run leaves no folder behind, even when a test fails
 * before its own cleanup. Readable by all: test clusters run as the postgres user.
 */
const testTemp = mkdtempSync(join(tmpdir(), "shinkei-test-"));
chmodSync(testTemp, 0o755);
process.env.TMPDIR = testTemp;
afterAll(() => {
  try {
    rmSync(testTemp, { recursive: true, force: true });
  } catch (e) {
    // A tmpfs a failed test left mounted in it, say: say what is left rather than fail the run here.
    console.warn(`test temp folder ${testTemp} not removed: ${(e as Error).message}`);
  }
});

/*
 * Why not simply call setDefaultTimeout here: bun test reads no timeout from bunfig.toml
 * (oven-sh/bun#7789), and in bun 1.4 a preload's setDefaultTimeout holds for the first test file
 * only; every later file of the run falls back to 5 s (oven-sh/bun#43787). A call at the top of a
 * test file does hold for that file, so the preload puts one there as each test file loads. The
 * line is prepended without a newline, so line numbers in failures stay those of the file.
 */
plugin({
  name: "shinkei-test-timeout",
  setup(build) {
    build.onLoad({ filter: /\.test\.ts$/ }, async ({ path }) => ({
      loader: "ts",
      contents: `import { setDefaultTimeout as __setDefaultTimeout } from "bun:test"; __setDefaultTimeout(${TEST_TIMEOUT_MS}); ${await readFile(path, "utf8")}`,
    }));
  },
});

/**
 * `expect(result).toSucceed()` for a CLI run: exit code 0, and on failure the message carries what
 * the command printed, so a failure seen only in CI says why.
 */
expect.extend({
  toSucceed(received: unknown) {
    const r = received as { code?: number; stdout?: string; stderr?: string };
    return {
      pass: r.code === 0,
      message: () => `expected exit code 0, got ${r.code}\nstderr: ${String(r.stderr ?? "").trim().slice(-2000)}\nstdout: ${String(r.stdout ?? "").trim().slice(-1000)}`,
    };
  },
});
