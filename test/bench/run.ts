/**
 * `bun run bench`: shinkei against what a user would run instead, in one run on one machine, so
 * the ratios hold however noisy the machine is. Writes test/bench/results.json and RESULTS.md.
 *   --sizes 100MB,1GB   data sizes for backup/restore     --runs 3   repetitions (medians)
 *   --seconds 10        length of each HTTP load          --smoke    a run for CI: nothing written
 */
import { mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { generate, parseSize } from "./generate.ts";
import { benchRecover } from "./recover.ts";
import {
  arg,
  type BenchRow,
  buildShinkei,
  databaseUrl,
  fmtMiB,
  fmtMs,
  machine,
  median,
  noSlower,
  type NoteRow,
  registerAndLogin,
  root,
  rowLine,
  serverUrl as server,
  shinkeiBin as bin,
  smoke,
  startHelper,
  timed,
  verdict,
  writeLoginScript,
  writeResults,
  wrk,
} from "./tools.ts";
import { benchPasswordReset } from "./password-reset.ts";
import { benchMetrics } from "./metrics.ts";
import { judgeScript } from "../../src/backup/judge.ts";
import { Spool } from "../../src/backup/spool.ts";
import { sealTo, unsealFrom } from "../../src/storage/seal.ts";
import { archiveWalFile, walRoot, WAL_ZSTD_LEVEL } from "../../src/wal/archive.ts";
import { fetchWal } from "../../src/wal/fetch.ts";
import { loadConfig } from "../../src/config/index.ts";

async function drainMs(stream: AsyncIterable<unknown>): Promise<number> {
  const started = performance.now();
  for await (const _ of stream);
  return performance.now() - started;
}

if (!Bun.which("wrk")) {
  console.error("bun run bench needs wrk for the HTTP load (apt install wrk, or brew install wrk)");
  process.exit(2);
}

const sizes = arg("sizes", "100MB,1GB").split(",");
const runs = Number(arg("runs", "3"));
const seconds = Number(arg("seconds", "10"));
const urlFor = (db: string) => databaseUrl(server, db);
const admin = postgres(server, { max: 1, onnotice: () => {} });
const pgEnv = (db: string) => {
  const u = new URL(server);
  return {
    PGHOST: u.hostname,
    PGPORT: u.port || "5432",
    PGUSER: decodeURIComponent(u.username) || "postgres",
    PGPASSWORD: decodeURIComponent(u.password),
    PGDATABASE: db,
  };
};
async function recreate(db: string) {
  await admin`drop database if exists ${admin(db)} with (force)`;
  await admin`create database ${admin(db)}`;
}

const rows: BenchRow[] = [];
function add(r: BenchRow) {
  rows.push(r);
  console.log(rowLine(r, 46, 12));
}
/** Rows measured without a baseline beside them (the password-reset and metrics benches'). */
function addNotes(group: string, notes: NoteRow[]) {
  for (const r of notes) add({ group, ...r, baseline: "", ratio: null, raw: r.raw as Record<string, number> });
}

await buildShinkei();
const work = join(tmpdir(), `shinkei-bench-${process.pid}`);
await mkdir(join(work, "s3"), { recursive: true });
const s3 = await startHelper(["bun", join(import.meta.dir, "s3-server.ts"), join(work, "s3"), "bench"], { cwd: root });
const s3env = {
  S3_BUCKET: "bench",
  S3_PREFIX: "b/",
  S3_ENDPOINT: `http://127.0.0.1:${s3.ready.port}`,
  S3_FORCE_PATH_STYLE: "true",
  AWS_ACCESS_KEY_ID: "S3RVER",
  AWS_SECRET_ACCESS_KEY: "S3RVER",
};

const ageKey = JSON.parse(
  (await timed([bin, "backup", "keygen", "--output", join(work, "bench.key"), "--json"])).stdout,
).recipient as string;
const rss: Record<string, { backup: number; restore: number }> = {};
try {
  for (const size of sizes) {
    const db = `shinkei_bench_${size.toLowerCase()}`;
    await recreate(db);
    const gen = await generate(urlFor(db), parseSize(size));
    const [{ bytes }] = (await admin`select pg_database_size(${db})::int8 as bytes`) as unknown as [{ bytes: string }];
    console.log(`\n${size}: ${gen.beats} story beats, database ${fmtMiB(Number(bytes))}`);
    const dir = join(work, db);
    await mkdir(dir, { recursive: true });
    const ourEnv = { DATABASE_URL: urlFor(db), BACKUP_DIR: dir, NO_COLOR: "1" };

    const bare: number[] = [],
      ours: number[] = [],
      withS3: number[] = [],
      withAge: number[] = [],
      oursRss: number[] = [];
    let bareSize = 0,
      ourSize = 0,
      ourFile = "";
    for (let i = 0; i < runs; i++) {
      const out = join(work, "bare.dump");
      bare.push((await timed(["pg_dump", "-Fc", "-f", out], { env: pgEnv(db) })).ms);
      bareSize = (await stat(out)).size;
      const r = await timed([bin, "backup"], { env: ourEnv });
      ours.push(r.ms);
      oursRss.push(r.maxRssBytes);
      ourFile = r.stdout.match(/^backup\s+(\S+)$/m)![1]!;
      ourSize = (await stat(ourFile)).size;
      withS3.push((await timed([bin, "backup"], { env: { ...ourEnv, ...s3env } })).ms);
      withAge.push((await timed([bin, "backup"], { env: { ...ourEnv, BACKUP_AGE_RECIPIENTS: ageKey } })).ms);
      for (const f of await readdir(dir))
        if (!ourFile.endsWith(f) && !f.startsWith(ourFile.split("/").pop()!)) await rm(join(dir, f));
    }
    add({ group: "backup", ...noSlower(`backup ${size}: ours vs pg_dump -Fc`, ours, bare) });
    add({
      group: "backup",
      name: `backup ${size}: file size vs pg_dump -Fc`,
      ours: fmtMiB(ourSize),
      baseline: fmtMiB(bareSize),
      ratio: ourSize / bareSize,
      goal: "≤ 1.0x",
      met: ourSize <= bareSize,
      raw: { oursBytes: ourSize, baselineBytes: bareSize },
    });
    add({
      group: "backup",
      name: `backup ${size}: age-encrypted vs not`,
      ours: fmtMs(median(withAge)),
      baseline: fmtMs(median(ours)),
      ratio: median(withAge) / median(ours),
      goal: "≤ 1.25x",
      met: median(withAge) <= 1.25 * median(ours),
      raw: { oursMs: median(withAge), baselineMs: median(ours) },
    });
    add({
      group: "backup",
      name: `backup ${size}: with S3 copy vs without`,
      ours: fmtMs(median(withS3)),
      baseline: fmtMs(median(ours)),
      ratio: median(withS3) / median(ours),
      goal: "≤ 1.25x",
      met: median(withS3) <= 1.25 * median(ours),
      raw: { oursMs: median(withS3), baselineMs: median(ours) },
    });

    const restoreBare: number[] = [],
      restoreOurs: number[] = [],
      restoreRss: number[] = [];
    const target = `${db}_restore`;
    for (let i = 0; i < runs; i++) {
      await recreate(target);
      restoreBare.push((await timed(["pg_restore", "-d", target, join(work, "bare.dump")], { env: pgEnv(target) })).ms);
      await recreate(target);
      const r = await timed(
        [
          bin,
          "backup",
          "restore",
          ourFile,
          "--allow-superuser",
          "--yes",
          "--confirm-database",
          target,
          "--no-safety-backup",
        ],
        { env: { ...ourEnv, DATABASE_URL: urlFor(target) } },
      );
      restoreOurs.push(r.ms);
      restoreRss.push(r.maxRssBytes);
    }
    await admin`drop database if exists ${admin(target)} with (force)`;
    add({
      group: "restore",
      ...noSlower(`restore ${size}: ours (verify+load+check) vs pg_restore`, restoreOurs, restoreBare),
    });
    rss[size] = { backup: Math.max(...oursRss), restore: Math.max(...restoreRss) };
    // The restore's judge reads every byte of the SQL before anything runs (splitter, PostgreSQL's
    // parser, the spool the load then reads): its rate next to reading the same SQL bare.
    const plainSql = join(work, "plain.sql");
    await timed(["pg_dump", "--no-owner", "-f", plainSql], { env: pgEnv(db) });
    const guardMs: number[] = [],
      readMs: number[] = [];
    for (let i = 0; i < runs; i++) {
      readMs.push(await drainMs(Bun.file(plainSql).stream()));
      const spool = new Spool(work);
      const started = performance.now();
      await judgeScript(Bun.file(plainSql).stream(), spool);
      for (const _ of spool.records());
      guardMs.push(performance.now() - started);
      spool.remove();
    }
    const sqlBytes = (await stat(plainSql)).size;
    add({
      group: "restore",
      name: `restore ${size}: judge + spool vs bare read of the SQL`,
      ours: `${Math.round(sqlBytes / 1e3 / median(guardMs))} MB/s`,
      baseline: `${Math.round(sqlBytes / 1e3 / median(readMs))} MB/s`,
      ratio: median(guardMs) / median(readMs),
      goal: "report (psql loads far slower)",
      met: null,
      raw: { guardMs: median(guardMs), readMs: median(readMs), bytes: sqlBytes },
    });
    await rm(plainSql, { force: true });
    for (const r of await benchRecover({ bin, url: urlFor(db), dir, size, runs, restoreMs: median(restoreOurs) }))
      add(r);
    for (const kind of ["backup", "restore"] as const) {
      add({
        group: "memory",
        name: `peak RSS, ${kind} ${size}`,
        ours: fmtMiB(rss[size]![kind]),
        baseline: "",
        ratio: null,
        goal: "< 150 MiB",
        met: rss[size]![kind] < 150 * 1048576,
        raw: { oursBytes: rss[size]![kind] },
      });
    }
    await admin`drop database if exists ${admin(db)} with (force)`;
  }
  if (sizes.length > 1) {
    const [a, b] = [sizes[0]!, sizes.at(-1)!];
    for (const kind of ["backup", "restore"] as const) {
      const ratio = rss[b]![kind] / rss[a]![kind];
      add({
        group: "memory",
        name: `peak RSS ${kind}: ${b} vs ${a} (flat)`,
        ours: fmtMiB(rss[b]![kind]),
        baseline: fmtMiB(rss[a]![kind]),
        ratio,
        goal: "≈ 1.0x (flat)",
        met: ratio < 1.3,
        raw: { oursBytes: rss[b]![kind], baselineBytes: rss[a]![kind] },
      });
    }
  }
} finally {
  s3.proc.kill("SIGTERM");
}

// ---- WAL archive with a passphrase ----
// Every segment sealed and opened with the passphrase itself (a scrypt each, as before) against
// the archive's way: one key per writing process, wrapped with the passphrase once.
{
  const dir = join(work, "wal-passphrase");
  const age = { recipients: [], passphrase: "a bench passphrase, long enough" };
  const segments = smoke ? 3 : 8;
  const segment = new Uint8Array(16 << 20).map((_, i) => (i * 2654435761) >>> 24);
  const perFile: number[] = [];
  const processKey: number[] = [];
  for (let i = 0; i < segments; i++) {
    const path = join(dir, `each-${i}.zst.age`);
    await mkdir(dir, { recursive: true });
    const started = performance.now();
    await sealTo(segment, path, { codec: "zstd", level: WAL_ZSTD_LEVEL, age });
    for await (const _ of await unsealFrom(path, { name: path, age, encryption: { method: "passphrase" } }));
    perFile.push(performance.now() - started);
  }
  const config = loadConfig({
    DATABASE_URL: server,
    BACKUP_DIR: dir,
    WAL_ARCHIVE: "stream",
    BACKUP_AGE_PASSPHRASE: age.passphrase,
  });
  const spool = join(dir, "spool-bench");
  await mkdir(spool, { recursive: true });
  for (let i = 0; i < segments; i++) {
    const name = `0000000100000000000000${(0x10 + i).toString(16).toUpperCase()}`;
    await Bun.write(join(spool, name), segment);
    const started = performance.now();
    await archiveWalFile(join(spool, name), walRoot(dir), { segmentBytes: 16 << 20, age });
    await fetchWal(config, name, join(dir, `fetched-${name}`), undefined, { durable: false });
    processKey.push(performance.now() - started);
  }
  await rm(dir, { recursive: true, force: true });
  // Medians: the first segment of the archive's way pays the one wrap and the one unwrap.
  add({
    group: "wal",
    name: "WAL segment sealed + opened with a passphrase: archive's way vs scrypt per file",
    ours: fmtMs(median(processKey)),
    baseline: fmtMs(median(perFile)),
    ratio: median(processKey) / median(perFile),
    goal: "≤ 0.25x",
    met: median(processKey) <= 0.25 * median(perFile),
    raw: { oursMs: median(processKey), baselineMs: median(perFile), segments },
  });
}

// ---- auth server ----
{
  const db = "shinkei_bench_auth";
  await recreate(db);
  // The flood is one account from one address with the right password: in-flight attempts count
  // against the pair limit, so lift it to measure hashing, not refusals.
  const api = await startHelper([bin, "serve"], {
    env: {
      DATABASE_URL: urlFor(db),
      HOST: "127.0.0.1",
      PORT: "0",
      COOKIE_SECURE: "false",
      LOGIN_MAX_FAILURES: "1000",
      LOGIN_MAX_FAILURES_PER_IP: "100000",
    },
    until: (l) => l.msg === "listening",
  });
  const bare = await startHelper(["bun", join(import.meta.dir, "bare-server.ts")]);
  const base = String(api.ready.url);
  try {
    const account = { email: "bench@example.com", password: "benchmark password", name: "Bench" };
    const token = await registerAndLogin(base, account);

    const me = await wrk(`${base}/api/v1/auth/me`, {
      connections: 32,
      seconds,
      headers: { Authorization: `Bearer ${token}` },
    });
    const constant = await wrk(`http://127.0.0.1:${bare.ready.port}/`, { connections: 32, seconds });
    add({
      group: "auth",
      name: "GET /me req/s vs bare Bun.serve",
      ours: me.rps.toFixed(0),
      baseline: constant.rps.toFixed(0),
      ratio: me.rps / constant.rps,
      goal: "≥ 0.5x",
      met: me.rps >= 0.5 * constant.rps,
      raw: { ours: me.rps, baseline: constant.rps },
    });
    add({
      group: "auth",
      name: "GET /me p50 / p99",
      ours: `${me.p50ms.toFixed(2)} / ${me.p99ms.toFixed(2)} ms`,
      baseline: `${constant.p50ms.toFixed(2)} / ${constant.p99ms.toFixed(2)} ms`,
      ratio: null,
      goal: "",
      met: null,
      raw: { p50: me.p50ms, p99: me.p99ms, baseP50: constant.p50ms, baseP99: constant.p99ms },
    });

    const script = join(work, "login.lua");
    await writeLoginScript(script, account);
    const [flood, health] = await Promise.all([
      wrk(`${base}/api/v1/auth/login`, { connections: 16, seconds, script }),
      wrk(`${base}/health`, { connections: 2, seconds }),
    ]);
    add({
      group: "auth",
      name: "login req/s (argon2id 64 MiB, t=2, 2 at once)",
      ours: flood.rps.toFixed(1),
      baseline: "",
      ratio: null,
      goal: "",
      met: null,
      raw: { ours: flood.rps, non2xx: flood.non2xx },
    });
    add({
      group: "auth",
      name: "/health p99 during the login flood",
      ours: `${health.p99ms.toFixed(2)} ms`,
      baseline: "",
      ratio: null,
      goal: "< 50 ms",
      met: health.p99ms < 50,
      raw: { p99: health.p99ms, p50: health.p50ms },
    });
  } finally {
    api.proc.kill("SIGTERM");
    bare.proc.kill("SIGTERM");
    await api.proc.exited;
    await admin`drop database if exists ${admin(db)} with (force)`;
  }
}

// ---- password reset: known vs unknown addresses, and its rate next to /login ----
addNotes("auth", await benchPasswordReset(bin, server, seconds));

// ---- metrics: a scrape every second must not slow /me; the status page with 1,000 backups ----
addNotes("ops", await benchMetrics(bin, server, Math.ceil(seconds * 0.6), smoke ? 1 : 5));

// ---- CLI start-up ----
{
  const hello = join(work, "hello");
  await writeFile(`${hello}.ts`, `console.log("hello")`);
  await timed(["bun", "build", "--compile", `${hello}.ts`, "--outfile", hello]);
  const times = async (cmd: string[]) => {
    const xs: number[] = [];
    for (let i = 0; i < 20; i++) xs.push((await timed(cmd)).ms);
    return median(xs);
  };
  const ours = await times([bin, "--help"]);
  const baseline = await times([hello]);
  add({
    group: "cli",
    name: "dist/shinkei --help vs a compiled hello world",
    ours: fmtMs(ours),
    baseline: fmtMs(baseline),
    ratio: ours / baseline,
    goal: "< 100 ms",
    met: ours < 100,
    raw: { oursMs: ours, baselineMs: baseline },
  });
}

await admin.end();
await rm(work, { recursive: true, force: true });

// ---- report ----
const pg = Bun.spawnSync(["pg_dump", "--version"]).stdout.toString().trim();
const measuredOn = `${machine()}, ${pg}`;
const date = new Date().toISOString();
await writeResults(
  join(import.meta.dir, "results.json"),
  JSON.stringify({ date, machine: measuredOn, runs, sizes, rows }, null, 2) + "\n",
);
const table = [
  "| measurement | shinkei | baseline | ratio | goal | |",
  "| --- | --- | --- | --- | --- | --- |",
  ...rows.map(
    (r) =>
      `| ${r.name} | ${r.ours} | ${r.baseline} | ${r.ratio === null ? "" : `${r.ratio.toFixed(2)}x`} | ${r.goal} | ` +
      `${verdict(r.met, "**missed**")} |`,
  ),
].join("\n");
await writeResults(
  join(import.meta.dir, "RESULTS.md"),
  `# Benchmark results

Measured by \`bun run bench\` (medians of ${runs} runs; load by wrk in its own process).

- date: ${date}
- machine: ${measuredOn}

${table}
${await peersSection()}`,
);

/**
 * The last runs of bench:peers and bench:wal-cost, as their own results files hold them, so this
 * one page shows every comparison (each bench writes only its own file).
 */
async function peersSection(): Promise<string> {
  const read = async (name: string) =>
    Bun.file(join(import.meta.dir, name))
      .json()
      .catch(() => null);
  const peers = await read("peers-results.json");
  const cost = await read("wal-cost-results.json");
  let out = "";
  if (peers) {
    out +=
      `\n## Next to pgBackRest and Barman (\`bun run bench:peers\`, ${peers.date}, scale ${peers.scale}, ` +
      `${peers.rounds} rounds; configurations in PEERS.md)\n\n` +
      "| measurement | shinkei | pgBackRest | Barman | floor |\n| --- | --- | --- | --- | --- |\n" +
      (peers.rows as { measurement: string; shinkei: string; pgbackrest: string; barman: string; floor: string }[])
        .map((r) => `| ${r.measurement} | ${r.shinkei} | ${r.pgbackrest} | ${r.barman} | ${r.floor} |`)
        .join("\n") +
      "\n";
  }
  if (cost) {
    const f = (x: number | undefined, d = 3) => (x === undefined ? "" : x.toFixed(d));
    out +=
      `\n## What streaming the WAL costs writers (\`bun run bench:wal-cost\`, ${cost.date}, ` +
      `${cost.rounds} rounds)\n\n` +
      "| mode | TPS vs off | CPU per transaction vs off | pg_receivewal ms/MiB | service ms/MiB " +
      "| walsender ms/MiB |\n" +
      "| --- | --- | --- | --- | --- | --- |\n" +
      (cost.summary as Record<string, number & string>[])
        .map(
          (m) =>
            `| ${m.mode} | ${f(m.ratioToOff)} | ${f(m.cpuRatioToOff)} | ${f(m.receiverCpuMsPerMiB, 1)} | ` +
            `${f(m.serviceCpuMsPerMiB, 1)} | ${f(m.walsenderCpuMsPerMiB, 1)} |`,
        )
        .join("\n") +
      "\n";
  }
  return out;
}
console.log(`\nwrote test/bench/RESULTS.md and test/bench/results.json`);
