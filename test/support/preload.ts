import { plugin } from "bun";
import { readFile } from "node:fs/promises";

/** Real databases, servers and processes: bun's 5 s default is too tight on a busy 2-core machine. */
const TEST_TIMEOUT_MS = 60_000;

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
