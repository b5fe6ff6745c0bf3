/** Small helpers for the benchmark: timed child processes, medians, and wrk's report. */
import { writeFile } from "node:fs/promises";
import { basename } from "node:path";

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

/** Write a results file, unless this is a smoke run. */
export async function writeResults(path: string, text: string): Promise<void> {
  if (smoke) return console.log(`smoke run: ${basename(path)} left as it was`);
  await writeFile(path, text);
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
