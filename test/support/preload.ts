import { plugin } from "bun";
import { afterAll, beforeAll, expect } from "bun:test";
import { chmodSync, mkdtempSync, realpathSync, statfsSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { delimiter, dirname, join } from "node:path";
import { removeTempDirs } from "./fixtures.ts";
import { findServerBinaries } from "../../src/pg/bin.ts";

/** Real databases, servers and processes: bun's 5 s default is too tight on a busy 2-core machine. */
const TEST_TIMEOUT_MS = 60_000;

/*
 * The run's temp files live on tmpfs when /dev/shm is one we may write: test clusters copied from
 * the initdb cache, base backups unpacked, scratch instances, backups. On a disk filesystem, making
 * and deleting their many small files and the fsyncs cost a large share of the suite's CPU time
 * (ext4 inode allocation above all). A folder of the run's, shinkei-run-XXXXXX, becomes TMPDIR: for
 * tmpdir() here and everything the tests start (the helpers that give a child an environment of its
 * own pass TMPDIR on). Mode 1777 like /tmp: the server's OS user (postgres, when we are root) makes
 * and enters folders in it. Without a usable /dev/shm (none, not tmpfs, not writable, or too small),
 * the temp directory stays what it was.
 *
 * The folder and those tests make with tempDir are removed after the file's last test, so a run leaves
 * none behind, even when a test fails before its own cleanup. Under bun test --parallel each file
 * runs in a global of its own (this preload runs again, a folder each); with --no-isolate a worker's
 * files share one global, so the next file makes a new folder before its tests; plain bun test runs
 * these hooks once, around the whole run. One folder stays on purpose, a cache and named so:
 * shinkei-test-cache-<uid> (INITDB_CACHE in cluster.ts) in the temp directory the run started with,
 * the data directories initdb made, which every later test cluster copies instead of running initdb.
 */
const TMPFS = "/dev/shm";
const TMPFS_MAGIC = 0x01021994;
/** Less free than this (a container's /dev/shm is 64 MiB by default), the run's files would not fit. */
const TMPFS_MIN_FREE = 2 * 1024 ** 3;
const startTmpdirEnv = process.env.TMPDIR;
let runDir: string | null = null;

function useTmpfs(): void {
  if (runDir) return;
  try {
    const fs = statfsSync(TMPFS);
    if (fs.type !== TMPFS_MAGIC || fs.bavail * fs.bsize < TMPFS_MIN_FREE) return;
    const dir = mkdtempSync(join(TMPFS, "shinkei-run-"));
    chmodSync(dir, 0o1777);
    runDir = dir;
    process.env.TMPDIR = dir;
  } catch {
    // No /dev/shm, or not ours to write: the run's files go to the temp directory it started with.
  }
}

async function leaveTmpfs(): Promise<void> {
  const dir = runDir;
  if (!dir) return;
  runDir = null;
  if (startTmpdirEnv === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = startTmpdirEnv;
  await rm(dir, { recursive: true, force: true }).catch((e) =>
    console.warn(`temp folder ${dir} not removed: ${(e as Error).message}`),
  );
}

/*
 * PostgreSQL's programs come first on PATH from the installed server's own folder, for the test
 * process and everything it starts. Where pg_dump, psql, pg_restore and the WAL tools on PATH are
 * a launcher that picks a version and then runs the real program (Debian's pg_wrapper, a Perl
 * script), every call costs 50 to 70 ms of CPU before the program starts, several times the
 * program's own start; backups, restores and stock dumps call them hundreds of times in a run.
 * The programs found are the same installation's, so what runs is what the launcher would run;
 * tests that give a child a PATH of their own (a fake tool first, /usr/bin alone) still do.
 */
function serverBinFirstOnPath(): void {
  const bin = findServerBinaries();
  if (!bin) return;
  const dir = dirname(realpathSync(join(bin, "pg_ctl")));
  const path = (process.env.PATH ?? "").split(delimiter);
  if (path[0] !== dir) process.env.PATH = [dir, ...path.filter((p) => p !== dir)].join(delimiter);
}
serverBinFirstOnPath();

// Now, for what the test file does as it loads; again before its tests, after a file before it left.
useTmpfs();
beforeAll(useTmpfs);
afterAll(async () => {
  await removeTempDirs();
  await leaveTmpfs();
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
