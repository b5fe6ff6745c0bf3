/** Small helpers for the benchmark: timed child processes, medians, and wrk's report. */
import { writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { basename, join } from "node:path";
import postgres from "postgres";

/**
 * `--smoke`: the smallest run that still goes through every step (CI runs each bench this way, so a
 * bench cannot break unnoticed). Its figures mean nothing, so the committed results stay as they are.
 */
export const smoke = process.argv.includes("--smoke");

/** The value after `--name` on the command line, else the fallback. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

/** The checkout the benches run in, and the binary `bun run build` makes there (what users run). */
export const root = join(import.meta.dir, "..", "..");
export const shinkeiBin = join(root, "dist", "shinkei");
export const buildShinkei = () => timed(["bun", "run", "build"], { cwd: root });

/** The PostgreSQL server the benches make their databases on. */
export const serverUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
/** Database `db` on the server at `server`. */
export const databaseUrl = (server: string, db: string) =>
  Object.assign(new URL(server), { pathname: `/${db}` }).toString();

/** The machine the figures come from, for a results file. */
export const machine = () =>
  `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Bun ${Bun.version}`;

/** A measurement of ours beside what a user would run instead, and the goal it must meet (if any). */
export type BenchRow = {
  group: string;
  name: string;
  ours: string;
  baseline: string;
  ratio: number | null;
  goal: string;
  met: boolean | null;
  raw: Record<string, number>;
};

/** A measurement without a baseline beside it. */
export type NoteRow = {
  name: string;
  ours: string;
  goal: string;
  met: boolean | null;
  raw: Record<string, unknown>;
};

/** How a row's goal came out: "met", `missed` (MISSED on the console, bold in Markdown), "" without a goal. */
export const verdict = (met: boolean | null, missed = "MISSED") => (met === null ? "" : met ? "met" : missed);

/** Ours against the baseline by the medians of their timings: the goal is to be no slower. */
export function noSlower(name: string, ours: number[], bare: number[]): Omit<BenchRow, "group"> {
  const o = median(ours);
  const b = median(bare);
  return {
    name,
    ours: fmtMs(o),
    baseline: fmtMs(b),
    ratio: o / b,
    goal: "≤ 1.0x",
    met: o <= b,
    raw: { oursMs: o, baselineMs: b },
  };
}

/** A row as one line of the console's table, its name and value columns as wide as asked. */
export function rowLine(r: Omit<BenchRow, "group">, nameWidth: number, valueWidth: number): string {
  const ratio = r.ratio === null ? "" : `${r.ratio.toFixed(2)}x`.padStart(7);
  const values = `${r.ours.padStart(valueWidth)} ${r.baseline.padStart(valueWidth)}`;
  return `${r.name.padEnd(nameWidth)} ${values} ${ratio}  ${verdict(r.met)}`;
}

/** A row without a baseline as one line of the console's table. */
export const noteLine = (r: NoteRow, nameWidth: number, valueWidth: number) =>
  `${r.name.padEnd(nameWidth)} ${r.ours.padStart(valueWidth)}  ${verdict(r.met)}`;

/** A results file for rows without a baseline: what was measured and how, the table, the raw figures. */
export const noteReport = (title: string, how: string, rows: NoteRow[]) => `# ${title}

${how}

- date: ${new Date().toISOString()}
- machine: ${machine()}

| measurement | result | goal | |
| --- | --- | --- | --- |
${rows.map((r) => `| ${r.name} | ${r.ours} | ${r.goal} | ${verdict(r.met, "**missed**")} |`).join("\n")}

Raw: \`${JSON.stringify(rows.map((r) => r.raw))}\`
`;

/** Database `db` on the server at `server`, dropped if there and made anew; `admin` drops it at the end. */
export async function freshDatabase(server: string, db: string) {
  const admin = postgres(server, { max: 1, onnotice: () => {} });
  await admin`drop database if exists ${admin(db)} with (force)`;
  await admin`create database ${admin(db)}`;
  return { admin, url: databaseUrl(server, db) };
}

type Account = { email: string; password: string; name: string };

/** Register `account` on the compiled server at `base`. */
export async function register(base: string, account: Account): Promise<void> {
  await fetch(`${base}/api/v1/auth/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(account),
  });
}

/** Register `account` on the compiled server at `base`, then log in: its bearer token. */
export async function registerAndLogin(base: string, account: Account): Promise<string> {
  await register(base, account);
  const login = await fetch(`${base}/api/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: account.email, password: account.password }),
  });
  return ((await login.json()) as { token: string }).token;
}

/** A wrk script that logs `account` in on every request. */
export async function writeLoginScript(path: string, account: { email: string; password: string }): Promise<void> {
  const body = JSON.stringify({ email: account.email, password: account.password });
  await writeFile(
    path,
    `wrk.method = "POST"\nwrk.body = '${body}'\nwrk.headers["Content-Type"] = "application/json"\n`,
  );
}

/** The database `bench` on a cluster of the bench's own, and the libpq variables that reach it (pgbench). */
export async function benchDatabase(cluster: { url(database?: string): string; port: number }) {
  const admin = postgres(cluster.url(), { max: 1, onnotice: () => {} });
  await admin`create database bench`;
  const url = cluster.url("bench");
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  const pgEnv = { PGHOST: "127.0.0.1", PGPORT: String(cluster.port), PGUSER: "postgres", PGDATABASE: "bench" };
  return { admin, url, sql, pgEnv };
}

/** Write a results file, unless this is a smoke run. */
export async function writeResults(path: string, text: string): Promise<void> {
  if (smoke) return console.log(`smoke run: ${basename(path)} left as it was`);
  await writeFile(path, text);
  // Markdown as the project's formatter writes it (its tables padded), so bun run lint stays clean.
  if (path.endsWith(".md"))
    await Bun.spawn(["bun", "x", "biome", "format", "--write", path], { stdout: "ignore" }).exited;
}
export type Timed = { ms: number; maxRssBytes: number; code: number; stdout: string; stderr: string };

/**
 * Run a command to its end. Peak RSS is read from /proc (VmHWM) of that process alone: the rusage
 * a parent gets back folds in its children (pg_dump, psql), which are not ours to count.
 */
export async function timed(
  cmd: string[],
  options: { env?: Record<string, string | undefined>; cwd?: string; timeoutMs?: number } = {},
): Promise<Timed> {
  const start = performance.now();
  const p = Bun.spawn(cmd, {
    env: { ...process.env, ...options.env },
    cwd: options.cwd,
    stdout: "pipe",
    stderr: "pipe",
  });
  // `timeoutMs`: a command that never ends fails the bench, naming itself, instead of holding it for
  // good. It is killed, and the wait ends even if a child of its still holds its output open.
  let deadline: ReturnType<typeof setTimeout> | undefined;
  const overdue = new Promise<never>((_, reject) => {
    if (options.timeoutMs === undefined) return;
    deadline = setTimeout(() => {
      p.kill("SIGKILL");
      reject(new Error(`${cmd.join(" ")} did not finish within ${options.timeoutMs! / 1000} s (killed)`));
    }, options.timeoutMs);
  });
  let peakKb = 0;
  const poll = setInterval(async () => {
    const status = await Bun.file(`/proc/${p.pid}/status`)
      .text()
      .catch(() => "");
    peakKb = Math.max(peakKb, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0));
  }, 50);
  const [stdout, stderr, code] = await Promise.race([
    Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]),
    overdue,
  ]).finally(() => {
    clearInterval(poll);
    clearTimeout(deadline);
  });
  const ms = performance.now() - start;
  if (code !== 0) throw new Error(`${cmd.join(" ")} exited ${code}: ${stderr.slice(-500)}`);
  return { ms, maxRssBytes: peakKb * 1024, code, stdout, stderr };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export type WrkResult = { rps: number; p50ms: number; p99ms: number; requests: number; non2xx: number };

function toMs(v: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(v.trim());
  if (!m) return NaN;
  return Number(m[1]) * { us: 0.001, ms: 1, s: 1000, m: 60000 }[m[2] as "ms"];
}

/** Run wrk (a separate process, so load generation never shares our event loop) and parse its report. */
export async function wrk(
  url: string,
  options: {
    connections: number;
    seconds: number;
    threads?: number;
    headers?: Record<string, string>;
    script?: string;
  },
): Promise<WrkResult> {
  const args = ["wrk", "--latency", `-t${options.threads ?? 1}`, `-c${options.connections}`, `-d${options.seconds}s`];
  for (const [k, v] of Object.entries(options.headers ?? {})) args.push("-H", `${k}: ${v}`);
  if (options.script) args.push("-s", options.script);
  const r = await timed([...args, url]);
  const out = r.stdout;
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const p50 = toMs(/^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? "");
  const p99 = toMs(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? "");
  const requests = Number(/(\d+) requests in/.exec(out)?.[1]);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  return { rps, p50ms: p50, p99ms: p99, requests, non2xx };
}

export function fmtMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 2 : 0)} ms`;
}

export function fmtMiB(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** Start a helper process that prints one JSON line when ready (a server reporting its port). */
export async function startHelper(
  cmd: string[],
  options: {
    env?: Record<string, string | undefined>;
    cwd?: string;
    until?: (line: Record<string, unknown>) => boolean;
  } = {},
) {
  const proc = Bun.spawn(cmd, {
    env: { ...process.env, ...options.env },
    cwd: options.cwd,
    stdout: "pipe",
    stderr: "inherit",
  });
  const reader = proc.stdout.getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${cmd.join(" ")} exited before it was ready`);
    buffer += new TextDecoder().decode(value);
    const lines = buffer.split("\n");
    buffer = lines.pop()!;
    for (const line of lines) {
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>;
        if (!options.until || options.until(parsed)) {
          // Keep draining stdout so a chatty helper never blocks on a full pipe.
          (async () => {
            while (!(await reader.read()).done);
          })().catch(() => {});
          return { proc, ready: parsed };
        }
      } catch {
        // not JSON: keep reading
      }
    }
  }
}
