import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { ShinkeiError } from "../errors.ts";
import { plainEnv } from "./tools.ts";

/**
 * The one place PostgreSQL programs are found. Callers differ only in where they may look and
 * which version they accept:
 * - client tools a person runs against a server (pg_dump, pg_restore, psql): PATH only, so the
 *   copy is the one the person chose; pg_dump must be the server's major or newer (checkDumpVersion);
 * - streaming tools (pg_receivewal, pg_basebackup, pg_verifybackup): PATH, `pg_config --bindir`,
 *   then the usual install folders, the server's major or newer (findTool);
 * - server programs for a recovery instance (postgres, pg_ctl): exactly the backup's major (serverBinaries);
 * - server programs for the local cluster (initdb, pg_ctl): any version, PATH first, then the newest installed.
 */

export type PgTool = "pg_dump" | "pg_restore" | "psql";
export type WalTool = "pg_receivewal" | "pg_basebackup" | "pg_verifybackup";
export type FoundTool = { path: string; major: number; version: string };
type Env = Record<string, string | undefined>;

function versionOf(dir: string): number {
  return Number(/postgresql(?:@|\/)(\d+)/.exec(dir)?.[1] ?? 0);
}

/** The usual install folders of PostgreSQL binaries that hold every one of `tools`, newest version first. */
export function installedBinDirs(tools: string[]): string[] {
  const globs = [
    "/usr/lib/postgresql/*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/usr/pgsql-*/bin",
  ];
  const has = (dir: string) => tools.every((t) => existsSync(join(dir, t)));
  const found: string[] = [];
  for (const pattern of globs) {
    for (const dir of new Bun.Glob(pattern.slice(1)).scanSync({ cwd: "/", onlyFiles: false, absolute: true })) {
      if (has(dir)) found.push(dir);
    }
  }
  for (const dir of [
    "/opt/homebrew/bin",
    "/usr/local/pgsql/bin",
    "/Applications/Postgres.app/Contents/Versions/latest/bin",
  ]) {
    if (has(dir)) found.push(dir);
  }
  return found.sort((a, b) => versionOf(b) - versionOf(a));
}

/**
 * Folders holding every one of `tools`, in the order they are tried: the folder of the first tool
 * on PATH, then (if asked) `pg_config --bindir`, then the usual install folders, newest first.
 */
export function pgBinDirs(tools: string[], env: Env = process.env, options: { pgConfig?: boolean } = {}): string[] {
  const dirs: string[] = [];
  const onPath = Bun.which(tools[0]!, { PATH: env.PATH ?? "" });
  if (onPath) dirs.push(dirname(onPath));
  if (options.pgConfig) {
    const pgConfig = Bun.which("pg_config", { PATH: env.PATH ?? "" });
    if (pgConfig) {
      const p = Bun.spawnSync([pgConfig, "--bindir"], { stdout: "pipe", stderr: "ignore" });
      const bindir = p.stdout.toString().trim();
      if (p.exitCode === 0 && bindir) dirs.push(bindir);
    }
  }
  dirs.push(...installedBinDirs(tools));
  return [...new Set(dirs)].filter((d) => tools.every((t) => existsSync(join(d, t))));
}

/**
 * The first folder from pgBinDirs whose `tools[0]` reports a major version `accept` takes, and
 * every version seen on the way (for an error that names them). Debian installs one folder per
 * major (and a wrapper on PATH), so every candidate is asked its version.
 */
async function firstAccepted(
  tools: string[],
  env: Env,
  accept: (major: number) => boolean,
  pgConfig: boolean,
): Promise<{ found: FoundTool | null; seen: FoundTool[] }> {
  const seen: FoundTool[] = [];
  for (const dir of pgBinDirs(tools, env, { pgConfig })) {
    const path = join(dir, tools[0]!);
    const v = await binaryVersion(path, env).catch(() => null);
    if (!v) continue;
    const found = { path, major: v.major, version: v.text };
    if (accept(v.major)) return { found, seen };
    seen.push(found);
  }
  return { found: null, seen };
}

/** The version any PostgreSQL program at `path` reports with --version. */
export async function binaryVersion(path: string, env?: Env): Promise<{ major: number; minor: number; text: string }> {
  const p = Bun.spawn([path, "--version"], { stdout: "pipe", stderr: "pipe", env: plainEnv(env) });
  const text = (await new Response(p.stdout).text()).trim();
  await p.exited;
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(text);
  if (!m) throw new ShinkeiError("PG_TOOL_MISSING", `cannot tell the version of ${path} from "${text}"`);
  return { major: Number(m[1]), minor: Number(m[2] ?? 0), text: text.replace(/^.*?\(PostgreSQL\)\s+/, "") };
}

/** A client tool on PATH: the copy the person put first is the one that runs. */
export function toolPath(tool: PgTool, env: Env = process.env): string {
  const found = Bun.which(tool, { PATH: env.PATH ?? process.env.PATH ?? "" });
  if (!found) {
    throw new ShinkeiError("PG_TOOL_MISSING", `${tool} was not found on PATH`, {
      hint: "Install the PostgreSQL client tools matching your server (e.g. apt install postgresql-client-15).",
    });
  }
  return found;
}

/** The version a client tool reports, e.g. 15 and 20 for "pg_dump (PostgreSQL) 15.20". */
export async function toolMajor(tool: PgTool, env?: Env): Promise<{ major: number; minor: number; text: string }> {
  return binaryVersion(toolPath(tool, env), env);
}

/** pg_dump refuses a newer server; say so before starting, with both versions and the fix. */
export async function checkDumpVersion(serverVersionNum: number, env?: Env) {
  const dump = await toolMajor("pg_dump", env);
  const server = Math.floor(serverVersionNum / 10000);
  if (dump.major < server) {
    throw new ShinkeiError(
      "PG_VERSION_MISMATCH",
      `pg_dump ${dump.major} is older than the PostgreSQL ${server} server; it cannot dump it`,
      {
        hint:
          `Install pg_dump ${server} or newer (e.g. apt install postgresql-client-${server}) and put it ` +
          `first on PATH.`,
      },
    );
  }
  return { pgDump: dump.text, server };
}

/**
 * A copy of a streaming tool whose major version is the server's or newer: an older one cannot
 * stream from a newer server.
 */
export async function findTool(tool: WalTool, serverMajor: number, env: Env = process.env): Promise<FoundTool> {
  const { found, seen } = await firstAccepted([tool], env, (major) => major >= serverMajor, true);
  if (found) return found;
  if (seen.length === 0) {
    throw new ShinkeiError(
      "PG_TOOL_MISSING",
      `${tool} was not found (looked on PATH, in pg_config --bindir and the usual PostgreSQL folders)`,
      {
        hint:
          `Install PostgreSQL ${serverMajor}'s client programs (e.g. apt install ` +
          `postgresql-client-${serverMajor}).`,
      },
    );
  }
  const newest = seen.sort((a, b) => b.major - a.major)[0]!;
  throw new ShinkeiError(
    "PG_VERSION_MISMATCH",
    `${tool} ${newest.major} (${newest.path}) is older than the PostgreSQL ${serverMajor} server`,
    {
      hint: `Install ${tool} ${serverMajor} or newer (e.g. apt install postgresql-client-${serverMajor}).`,
    },
  );
}

/** The folder of PostgreSQL server programs of exactly `major`: recovery needs the same major as the backup. */
export async function serverBinaries(major: number, env: Env = process.env): Promise<string> {
  const { found, seen } = await firstAccepted(["pg_ctl", "postgres"], env, (m) => m === major, false);
  if (found) return dirname(found.path);
  const majors = [...new Set(seen.map((s) => String(s.major)))];
  throw new ShinkeiError(
    "PG_TOOL_MISSING",
    `the base backup is from PostgreSQL ${major}, and its server programs (postgres, pg_ctl) are not ` +
      `installed${majors.length ? ` (found PostgreSQL ${majors.join(", ")})` : ""}`,
    {
      hint:
        `Install the PostgreSQL ${major} server (e.g. apt install postgresql-${major}); recovery needs the ` +
        `same major version as the backup.`,
    },
  );
}

/**
 * Where initdb and pg_ctl live for the local cluster: PATH first, then the usual install folders,
 * newest version first.
 */
export function findServerBinaries(env: Env = process.env): string | null {
  return pgBinDirs(["pg_ctl", "initdb"], env)[0] ?? null;
}
