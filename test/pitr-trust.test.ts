import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { chmod, mkdir, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { binaryPath, buildBinary } from "./support/cli.ts";
import { tempDir } from "./support/fixtures.ts";

setDefaultTimeout(120_000);

let scratchRoot: string;

beforeAll(async () => {
  scratchRoot = await tempDir("pitr-trust-scratch");
  await chmod(scratchRoot, 0o755);
});
afterAll(async () => {
  await rm(scratchRoot, { recursive: true, force: true });
});

/** The binary under `timeout`: a command that hangs comes back as exit 124 instead of stalling the test. */
async function bounded(seconds: number, args: string[], env: Record<string, string>) {
  await buildBinary();
  const p = Bun.spawn(["timeout", "-s", "KILL", String(seconds), binaryPath, ...args], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", ...env },
    stdin: "ignore", stdout: "pipe", stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

describe("instance folders read as root", () => {
  test("a FIFO named postmaster.pid in a leftover instance folder does not hang pitr cleanup; the folder is removed", async () => {
    const root = join(scratchRoot, "shinkei-pitr-instance-fifo01");
    await mkdir(join(root, "data"), { recursive: true, mode: 0o700 });
    await writeFile(join(root, "instance.json"), JSON.stringify({
      pitrInstanceVersion: 1, root, dataDir: join(root, "data"), socketDir: join(root, "sockets"), bin: "/nonexistent",
      port: 5, ownerPid: 2 ** 22 + 17, createdAt: "2020-01-01T00:00:00.000Z", keep: false,
    }));
    const fifo = Bun.spawnSync(["mkfifo", join(root, "data", "postmaster.pid")]);
    expect(fifo.exitCode).toBe(0);
    const r = await bounded(30, ["pitr", "cleanup", "--json"], { TMPDIR: scratchRoot });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).removed.map((x: { root: string }) => x.root)).toEqual([root]);
    expect((await readdir(scratchRoot)).filter((n) => n.startsWith("shinkei-pitr-instance-"))).toEqual([]);
  });
});
