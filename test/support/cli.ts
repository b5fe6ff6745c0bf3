import { join } from "node:path";

const root = join(import.meta.dir, "..", "..");
export const binaryPath = join(root, "dist", "shinkei");

let built: Promise<void> | undefined;

/** Compile dist/shinkei once per test run, so CLI tests exercise the binary users run. */
export function buildBinary(): Promise<void> {
  return (built ??= (async () => {
    const p = Bun.spawn(["bun", "run", "build"], { cwd: root, stdout: "ignore", stderr: "pipe" });
    if ((await p.exited) !== 0) throw new Error(`build failed: ${await new Response(p.stderr).text()}`);
  })());
}

export type CliResult = { code: number; stdout: string; stderr: string };

/** Where and how to run it: `binary` is another copy of it (one copied alone into an empty folder, say). */
export type RunOptions = { cwd?: string; binary?: string };

/** Run the compiled binary with a clean environment plus `env` (no inherited DATABASE_URL surprises). */
export async function shinkei(args: string[], env: Record<string, string> = {}, options: RunOptions & { stdin?: string } = {}): Promise<CliResult> {
  await buildBinary();
  const p = Bun.spawn([options.binary ?? binaryPath, ...args], {
    cwd: options.cwd ?? root,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", ...env },
    stdin: options.stdin === undefined ? "ignore" : new Blob([options.stdin]),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

/** Take a backup through the binary; its path, or the error it printed. */
export async function takeBackup(env: Record<string, string>): Promise<string> {
  const r = await shinkei(["backup"], env);
  if (r.code !== 0 || r.stderr !== "") throw new Error(`shinkei backup exited ${r.code}: ${r.stderr}`);
  return r.stdout.match(/^backup\s+(\S+)$/m)![1]!;
}
