import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { binaryVersion } from "../backup/pgtools.ts";
import { installedBinDirs } from "../localdb.ts";

export type WalTool = "pg_receivewal" | "pg_basebackup" | "pg_verifybackup";
export type FoundTool = { path: string; major: number; version: string };

/** Folders that may hold PostgreSQL programs: PATH's, then `pg_config --bindir`, then the usual install folders. */
function candidateDirs(tool: string, env: Record<string, string | undefined>): string[] {
  const dirs: string[] = [];
  const onPath = Bun.which(tool, { PATH: env.PATH ?? "" });
  if (onPath) dirs.push(dirname(onPath));
  const pgConfig = Bun.which("pg_config", { PATH: env.PATH ?? "" });
  if (pgConfig) {
    const p = Bun.spawnSync([pgConfig, "--bindir"], { stdout: "pipe", stderr: "ignore" });
    const bindir = p.stdout.toString().trim();
    if (p.exitCode === 0 && bindir) dirs.push(bindir);
  }
  dirs.push(...installedBinDirs([tool]));
  return [...new Set(dirs)].filter((d) => existsSync(join(d, tool)));
}

/**
 * A copy of `tool` whose major version is the server's or newer. Debian installs one folder per
 * major (and a wrapper on PATH), so every candidate is asked its version; an older tool cannot
 * stream from a newer server, and the error names both versions.
 */
export async function findTool(tool: WalTool, serverMajor: number, env: Record<string, string | undefined> = process.env): Promise<FoundTool> {
  const seen: FoundTool[] = [];
  for (const dir of candidateDirs(tool, env)) {
    const path = join(dir, tool);
    const v = await binaryVersion(path, env).catch(() => null);
    if (!v) continue;
    if (v.major >= serverMajor) return { path, major: v.major, version: v.text };
    seen.push({ path, major: v.major, version: v.text });
  }
  if (seen.length === 0) {
    throw new ShinkeiError("PG_TOOL_MISSING", `${tool} was not found (looked on PATH, in pg_config --bindir and the usual PostgreSQL folders)`, {
      hint: `Install PostgreSQL ${serverMajor}'s client programs (e.g. apt install postgresql-client-${serverMajor}).`,
    });
  }
  const newest = seen.sort((a, b) => b.major - a.major)[0]!;
  throw new ShinkeiError("PG_VERSION_MISMATCH", `${tool} ${newest.major} (${newest.path}) is older than the PostgreSQL ${serverMajor} server`, {
    hint: `Install ${tool} ${serverMajor} or newer (e.g. apt install postgresql-client-${serverMajor}).`,
  });
}
