import { tmpdir } from "node:os";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";

const root = join(import.meta.dir, "..", "..");
export const binaryPath = join(root, "dist", "shinkei");

let built: Promise<void> | undefined;

/** A digest of everything the binary is built from: the same digest, the same binary. */
async function sourceDigest(): Promise<string> {
  const h = new Bun.CryptoHasher("sha256");
  const files = ["package.json", "bun.lock", "tsconfig.json"];
  for (const dir of ["src", "cli", "server"]) {
    for (const f of new Bun.Glob("**/*").scanSync({ cwd: join(root, dir) })) files.push(join(dir, f));
  }
  for (const f of files.sort()) h.update(f).update(await Bun.file(join(root, f)).bytes());
  return h.digest("hex");
}

/**
 * Compile dist/shinkei once for the sources as they are, so CLI tests exercise the binary users
 * run. Test files run in several processes at once (bun test --parallel): one builds while the
 * others wait on a lock file, and the new binary is renamed into place, so a file never runs a
 * half-written one. A stamp beside it names the digest it was built from: unchanged sources, no build.
 */
export function buildBinary(): Promise<void> {
  return (built ??= (async () => {
    const digest = await sourceDigest();
    const stamp = `${binaryPath}.digest`;
    const fresh = async () =>
      (await Bun.file(stamp)
        .text()
        .catch(() => "")) === digest && (await Bun.file(binaryPath).exists());
    if (await fresh()) return;
    await mkdir(dirname(binaryPath), { recursive: true });
    const lock = `${binaryPath}.lock`;
    const deadline = Date.now() + 300_000;
    for (;;) {
      try {
        await writeFile(lock, String(process.pid), { flag: "wx" });
        break;
      } catch (e) {
        // Only "another process holds it" is worth waiting for: anything else fails now, not in 5 minutes.
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        if (await fresh()) return;
        // A lock left by a build that was killed: its process is gone.
        const holder = Number(
          await Bun.file(lock)
            .text()
            .catch(() => "0"),
        );
        if (holder && !alive(holder)) await rm(lock, { force: true });
        if (Date.now() > deadline)
          throw new Error(`timed out waiting for ${lock} (another test process building the binary)`);
        await Bun.sleep(200);
      }
    }
    try {
      if (await fresh()) return;
      const tmp = `${binaryPath}.${process.pid}.tmp`;
      const p = Bun.spawn(["bun", "run", "build", "--outfile", tmp], { cwd: root, stdout: "ignore", stderr: "pipe" });
      if ((await p.exited) !== 0) throw new Error(`build failed: ${await new Response(p.stderr).text()}`);
      await rename(tmp, binaryPath);
      await writeFile(stamp, digest);
    } finally {
      await rm(lock, { force: true });
    }
  })());
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export type CliResult = { code: number; stdout: string; stderr: string };

/** Where and how to run it: `binary` is another copy of it (one copied alone into an empty folder, say). */
export type RunOptions = { cwd?: string; binary?: string };

/**
 * Run the compiled binary with a clean environment plus `env` (no inherited DATABASE_URL surprises).
 * TMPDIR is passed on (the run's, on tmpfs: see the preload) unless `env` names its own.
 * With `timeoutSeconds`, under `timeout -s KILL`: a command that hangs comes back killed (exit 137)
 * instead of stalling the test.
 */
export async function shinkei(
  args: string[],
  env: Record<string, string> = {},
  options: RunOptions & { stdin?: string; timeoutSeconds?: number } = {},
): Promise<CliResult> {
  await buildBinary();
  const limit = options.timeoutSeconds === undefined ? [] : ["timeout", "-s", "KILL", String(options.timeoutSeconds)];
  const p = Bun.spawn([...limit, options.binary ?? binaryPath, ...args], {
    cwd: options.cwd ?? root,
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/tmp",
      NO_COLOR: "1",
      TMPDIR: tmpdir(),
      ...env,
    },
    stdin: options.stdin === undefined ? "ignore" : new Blob([options.stdin]),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { code, stdout, stderr };
}

/** Take a backup through the binary; its path, or the error it printed. */
export async function takeBackup(env: Record<string, string>): Promise<string> {
  const r = await shinkei(["backup"], env);
  if (r.code !== 0 || r.stderr !== "") throw new Error(`shinkei backup exited ${r.code}: ${r.stderr}`);
  return r.stdout.match(/^backup\s+(\S+)$/m)![1]!;
}
