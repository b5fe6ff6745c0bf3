/**
 * /password-reset under load: the latency of known and unknown addresses side by side (they must
 * not be told apart), and its rate next to /login. Part of `bun run bench`; alone:
 *   bun run test/bench/password-reset.ts      (builds dist/shinkei; writes test/bench/PASSWORD-RESET.md)
 */
import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import {
  arg,
  buildShinkei,
  freshDatabase,
  type NoteRow,
  noteLine,
  noteReport,
  register,
  serverUrl,
  shinkeiBin,
  startHelper,
  timed,
  writeLoginScript,
  writeResults,
  wrk,
} from "./tools.ts";

const ACCOUNTS = 5000;
const fmt = (s: { p50: number; p90: number; p99: number }) =>
  `${s.p50.toFixed(2)} / ${s.p90.toFixed(2)} / ${s.p99.toFixed(2)} ms`;

/**
 * Against a fresh database on `serverUrl`: the compiled server with mail going to its log (SMTP
 * would add the same after-the-answer work), ACCOUNTS accounts, and throttle limits raised so the
 * load measures the route, not the 429 path.
 */
export async function benchPasswordReset(bin: string, serverUrl: string, seconds = 10): Promise<NoteRow[]> {
  const db = "shinkei_bench_reset";
  const { admin, url } = await freshDatabase(serverUrl, db);
  const env = {
    DATABASE_URL: url,
    HOST: "127.0.0.1",
    PORT: "0",
    COOKIE_SECURE: "false",
    SHINKEI_ENV: "development",
    LOGIN_MAX_FAILURES: "1000",
    LOGIN_MAX_FAILURES_PER_IP: "100000",
  };
  const api = await startHelper([bin, "serve"], { env, until: (l) => l.msg === "listening" });
  const base = String(api.ready.url);
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    // Reset never checks the password, so the accounts need no real hash (that would take minutes).
    await sql`insert into users (email, name, password_hash) select 'known' || i || '@bench.test', 'Bench ' || i, 'x'
      from generate_series(0, ${ACCOUNTS - 1}) i`;
    const load = await timed([
      "bun",
      join(import.meta.dir, "reset-load.ts"),
      base,
      String(seconds),
      "16",
      String(ACCOUNTS),
    ]);
    const r = JSON.parse(load.stdout) as {
      known: { p50: number; p90: number; p99: number; n: number };
      unknown: { p50: number; p90: number; p99: number; n: number };
      statuses: Record<string, number>;
      distinctBodies: number;
      rps: number;
    };

    await sql`delete from login_throttle`;
    const script = join(tmpdir(), `shinkei-reset-${process.pid}.lua`);
    await writeFile(
      script,
      `local i = 0
request = function()
  i = i + 1
  local kind = (i % 2 == 0) and "known" or "unknown"
  local body = '{"email":"' .. kind .. (i % ${ACCOUNTS}) .. '@bench.test"}'
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
`,
    );
    const flood = await wrk(`${base}/api/v1/auth/password-reset`, { connections: 16, seconds, script });

    // /login with the default argon2id cost, from a real registration, for the rate beside it.
    const account = { email: "login@bench.test", password: "benchmark password", name: "Bench" };
    await register(base, account);
    const loginScript = join(tmpdir(), `shinkei-login-${process.pid}.lua`);
    await writeLoginScript(loginScript, account);
    const login = await wrk(`${base}/api/v1/auth/login`, { connections: 16, seconds, script: loginScript });
    const p99Ratio = r.known.p99 / r.unknown.p99;
    return [
      { name: "/password-reset known: p50 / p90 / p99", ours: fmt(r.known), goal: "", met: null, raw: r.known },
      { name: "/password-reset unknown: p50 / p90 / p99", ours: fmt(r.unknown), goal: "", met: null, raw: r.unknown },
      {
        name: "/password-reset p99 known vs unknown",
        ours: `${p99Ratio.toFixed(2)}x`,
        goal: "0.8x to 1.25x",
        met: p99Ratio >= 0.8 && p99Ratio <= 1.25,
        raw: { ratio: p99Ratio, statuses: r.statuses, distinctBodies: r.distinctBodies },
      },
      {
        name: "/password-reset req/s (wrk, half known)",
        ours: flood.rps.toFixed(0),
        goal: "",
        met: null,
        raw: { rps: flood.rps, non2xx: flood.non2xx, p50: flood.p50ms, p99: flood.p99ms },
      },
      {
        name: "/login req/s, same server (argon2id 64 MiB, t=2)",
        ours: login.rps.toFixed(1),
        goal: "",
        met: null,
        raw: { rps: login.rps, non2xx: login.non2xx, p50: login.p50ms, p99: login.p99ms },
      },
    ];
  } finally {
    api.proc.kill("SIGTERM");
    await api.proc.exited;
    await sql.end();
    await admin`drop database if exists ${admin(db)} with (force)`;
    await admin.end();
  }
}

if (import.meta.main) {
  await buildShinkei();
  const rows = await benchPasswordReset(shinkeiBin, serverUrl, Number(arg("seconds", "10")));
  for (const r of rows) console.log(noteLine(r, 44, 28));
  await writeResults(
    join(import.meta.dir, "PASSWORD-RESET.md"),
    noteReport(
      "/password-reset benchmark",
      `Measured by \`bun run test/bench/password-reset.ts\` (also part of \`bun run bench\`): 16 connections
for 10 s sending known and unknown addresses interleaved, latencies recorded per kind by a load
process of its own; then wrk for the rate. Mail goes to the log (development).`,
      rows,
    ),
  );
}
