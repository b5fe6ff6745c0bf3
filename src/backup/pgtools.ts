import { ShinkeiError } from "../errors.ts";
import { describeTarget } from "../db.ts";

export type PgTool = "pg_dump" | "pg_restore" | "psql";

/** The libpq environment for `url`: the password travels in PGPASSWORD, never in argv where `ps` shows it. */
export function libpqEnv(url: string): Record<string, string> {
  const u = new URL(url);
  const t = describeTarget(url);
  const env: Record<string, string> = { PGHOST: t.host, PGPORT: String(t.port), PGUSER: t.user, PGDATABASE: t.database };
  if (u.password) env.PGPASSWORD = decodeURIComponent(u.password);
  const sslmode = u.searchParams.get("sslmode");
  if (sslmode) env.PGSSLMODE = sslmode;
  env.PGAPPNAME = "shinkei";
  return env;
}

/**
 * The environment a client tool runs with: what finds the tool and libpq needs, never the rest of
 * ours (S3 keys, age passphrases and identities, mail credentials). A restored file is untrusted;
 * whatever it might get a tool to do, it finds no secrets in that process.
 */
export function toolEnv(url: string, env: Record<string, string | undefined> = {}): Record<string, string> {
  return { ...plainEnv(env), ...libpqEnv(url) };
}

/** Only what finds a program and what libpq reads: for every PostgreSQL program we start. */
export function plainEnv(env: Record<string, string | undefined> = {}): Record<string, string> {
  const passes = (name: string) => /^(PATH|HOME|LANG|LANGUAGE|TZ|TMPDIR|LC_[A-Z]+|PG[A-Z0-9_]+)$/.test(name);
  const out: Record<string, string> = {};
  for (const source of [process.env, env]) {
    for (const [k, v] of Object.entries(source)) if (v !== undefined && passes(k)) out[k] = v;
  }
  return out;
}

export function toolPath(tool: PgTool, env: Record<string, string | undefined> = process.env): string {
  const found = Bun.which(tool, { PATH: env.PATH ?? process.env.PATH ?? "" });
  if (!found) {
    throw new ShinkeiError("PG_TOOL_MISSING", `${tool} was not found on PATH`, {
      hint: "Install the PostgreSQL client tools matching your server (e.g. apt install postgresql-client-15).",
    });
  }
  return found;
}

/** The version a client tool reports, e.g. 15 and 20 for "pg_dump (PostgreSQL) 15.20". */
export async function toolMajor(tool: PgTool, env?: Record<string, string | undefined>): Promise<{ major: number; minor: number; text: string }> {
  return binaryVersion(toolPath(tool, env), env);
}

/** The version any PostgreSQL program at `path` reports with --version. */
export async function binaryVersion(path: string, env?: Record<string, string | undefined>): Promise<{ major: number; minor: number; text: string }> {
  const p = Bun.spawn([path, "--version"], { stdout: "pipe", stderr: "pipe", env: plainEnv(env) });
  const text = (await new Response(p.stdout).text()).trim();
  await p.exited;
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(text);
  if (!m) throw new ShinkeiError("PG_TOOL_MISSING", `cannot tell the version of ${path} from "${text}"`);
  return { major: Number(m[1]), minor: Number(m[2] ?? 0), text: text.replace(/^.*?\(PostgreSQL\)\s+/, "") };
}

/** pg_dump refuses a newer server; say so before starting, with both versions and the fix. */
export async function checkDumpVersion(serverVersionNum: number, env?: Record<string, string | undefined>) {
  const dump = await toolMajor("pg_dump", env);
  const server = Math.floor(serverVersionNum / 10000);
  if (dump.major < server) {
    throw new ShinkeiError("PG_VERSION_MISMATCH", `pg_dump ${dump.major} is older than the PostgreSQL ${server} server; it cannot dump it`, {
      hint: `Install pg_dump ${server} or newer (e.g. apt install postgresql-client-${server}) and put it first on PATH.`,
    });
  }
  return { pgDump: dump.text, server };
}

export type Exit = { code: number; stderr: string };

/** Await a child and keep the tail of its stderr: the last lines are the ones that explain a failure. */
export async function finished(p: Bun.Subprocess<any, any, "pipe">): Promise<Exit> {
  const [stderr, code] = await Promise.all([new Response(p.stderr as ReadableStream).text(), p.exited]);
  return { code, stderr: stderr.trim().split("\n").slice(-5).join("\n") };
}

/**
 * Copy `source` into a child's stdin with backpressure. Stops at the first error (a damaged
 * source, or the child gone); whether to end the child's stdin is the caller's call.
 */
export async function pump(source: AsyncIterable<Uint8Array>, sink: Bun.FileSink): Promise<number> {
  let bytes = 0;
  for await (const chunk of source) {
    sink.write(chunk);
    bytes += chunk.length;
    await sink.flush();
  }
  return bytes;
}
