import { describeTarget } from "./db.ts";

/** The libpq environment for `url`: the password travels in PGPASSWORD, never in argv where `ps` shows it. */
export function libpqEnv(url: string): Record<string, string> {
  const u = new URL(url);
  const t = describeTarget(url);
  const env: Record<string, string> = {
    PGHOST: t.host,
    PGPORT: String(t.port),
    PGUSER: t.user,
    PGDATABASE: t.database,
  };
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
