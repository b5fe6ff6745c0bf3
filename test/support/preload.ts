import { plugin } from "bun";
import { afterAll, expect } from "bun:test";
import { readFile } from "node:fs/promises";
import { removeTempDirs } from "./fixtures.ts";

/** Real databases, servers and processes: bun's 5 s default is too tight on a busy 2-core machine. */
const TEST_TIMEOUT_MS = 60_000;

/*
 * The folders tests make with tempDir are removed after the file's last test (each file runs in a
 * process or global of its own under bun test --parallel), so a run leaves none behind, even when a
 * test fails before its own cleanup. Not a TMPDIR of its own for the run: pitr's scratch instances
 * put their unix sockets under TMPDIR, and one more folder level passes the 107-byte socket path limit.
 * One folder stays on purpose, a cache and named so: shinkei-test-cache-<uid> (INITDB_CACHE in cluster.ts),
 * the data directories initdb made, which every later test cluster copies instead of running initdb.
 */
afterAll(removeTempDirs);

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
      contents:
        `import { setDefaultTimeout as __setDefaultTimeout } from "bun:test"; ` +
        `__setDefaultTimeout(${TEST_TIMEOUT_MS}); ${await readFile(path, "utf8")}`,
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
      message: () =>
        `expected exit code 0, got ${r.code}\nstderr: ${String(r.stderr ?? "")
          .trim()
          .slice(-2000)}\nstdout: ${String(r.stdout ?? "")
          .trim()
          .slice(-1000)}`,
    };
  },
});
