/**
 * `bun run test:compose`: the compose stack built and run for real, walked as an operator walks the
 * README's compose runbook. Needs root, dockerd, docker-compose (or the compose plugin) and
 * debootstrap; without them (or where dockerd cannot start) it says so and skips.
 *
 * It starts a Docker daemon of its own (own data root and socket, no iptables), builds same-tag
 * stand-ins for the registry images it cannot pull (debian:bookworm-slim from debootstrap,
 * postgres:15-bookworm from Debian's postgresql-15, oven/bun:1.4.5 from this machine's bun), builds
 * shinkei:local from the Dockerfile with PG_SOURCE=debian PG_MAJOR=15, and runs compose.yaml from a
 * copy of the repository's files with published ports on 127.0.0.1 only. At the end the stack, the
 * daemon and every folder it made are removed, also when a step fails.
 */
import { mkdtemp, readFile, rm, writeFile, mkdir, copyFile } from "node:fs/promises";
import { existsSync, readFileSync } from "node:fs";
import { freePort } from "../../src/pg/localdb.ts";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = join(import.meta.dir, "..", "..");
const started = performance.now();
/** Every line of the README, trimmed: a runbook command is run only as the README writes it, whole. */
const readmeLines = new Set(
  readFileSync(join(root, "README.md"), "utf8")
    .split("\n")
    .map((l) => l.trim()),
);

const say = (msg: string) =>
  console.log(`[compose ${((performance.now() - started) / 1000).toFixed(0).padStart(4)}s] ${msg}`);
class Failure extends Error {}
function check(ok: unknown, what: string): asserts ok {
  if (!ok) throw new Failure(what);
}

type Run = { code: number; out: string; err: string };
async function run(
  cmd: string[],
  options: { env?: Record<string, string>; cwd?: string; stdin?: string; quiet?: boolean; timeoutMs?: number } = {},
): Promise<Run> {
  const p = Bun.spawn(cmd, {
    cwd: options.cwd,
    env: { ...process.env, ...dockerEnv, ...options.env },
    stdin: options.stdin === undefined ? "ignore" : new TextEncoder().encode(options.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => p.kill("SIGKILL"), options.timeoutMs ?? 15 * 60_000);
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  clearTimeout(timer);
  return { code, out, err };
}
/** Run and require exit 0; the output on failure names the command. */
async function must(cmd: string[], options: Parameters<typeof run>[1] = {}): Promise<string> {
  const r = await run(cmd, options);
  if (r.code !== 0)
    throw new Failure(`${cmd.join(" ")} exited ${r.code}\n${r.out.slice(-3000)}\n${r.err.slice(-3000)}`);
  return r.out;
}
/** An undo line as printed, runnable as it stands: the database named, production allowed. */
const RUNNABLE_UNDO = new RegExp(
  String.raw`undo with\s+shinkei backup --restore --backup-file \S+ --yes --confirm-database shinkei` +
    String.raw` --allow-production\s*$`,
  "m",
);
const which = (name: string) => Bun.which(name);

// ---------------------------------------------------------------------------------------------
// Can it run here?
function skipReason(): string | null {
  if (process.getuid?.() !== 0) return "needs root (dockerd and debootstrap run as root)";
  for (const tool of ["dockerd", "docker", "debootstrap", "tar"])
    if (!which(tool)) return `${tool} is not installed (apt-get install docker.io debootstrap docker-compose)`;
  if (!which("docker-compose") && Bun.spawnSync(["docker", "compose", "version"]).exitCode !== 0)
    return "neither docker-compose nor the compose plugin is installed";
  return null;
}

const work = await mkdtemp(join(tmpdir(), "shinkei-compose-"));
const socket = join(work, "docker.sock");
const dockerEnv: Record<string, string> = { DOCKER_HOST: `unix://${socket}` };
let daemon: Bun.Subprocess | undefined;

async function startDaemon(): Promise<string | null> {
  const log = Bun.file(join(work, "dockerd.log")).writer();
  daemon = Bun.spawn(
    [
      "dockerd",
      "--data-root",
      join(work, "data"),
      "--exec-root",
      join(work, "exec"),
      "--pidfile",
      join(work, "dockerd.pid"),
      "--host",
      `unix://${socket}`,
      "--storage-driver=overlay2",
      "--iptables=false",
      "--ip-masq=false",
      "--bridge=none",
    ],
    {
      stdout: "pipe",
      stderr: "pipe",
    },
  );
  // The daemon's output goes to its log file (read on failure), not into the test's.
  void (async () => {
    for await (const chunk of daemon!.stderr as ReadableStream<Uint8Array>) log.write(chunk);
  })();
  for (let i = 0; i < 60; i++) {
    if (daemon.exitCode !== null) break;
    if ((await run(["docker", "version", "--format", "{{.Server.Version}}"], { timeoutMs: 10_000 })).code === 0)
      return null;
    await Bun.sleep(500);
  }
  await log.flush();
  const tail = (await readFile(join(work, "dockerd.log"), "utf8").catch(() => ""))
    .trim()
    .split("\n")
    .slice(-5)
    .join("\n");
  return `dockerd did not start here:\n${tail}`;
}

async function stopDaemon(): Promise<void> {
  if (!daemon) return;
  daemon.kill("SIGTERM");
  const stopped = await Promise.race([daemon.exited.then(() => true), Bun.sleep(30_000).then(() => false)]);
  if (!stopped) {
    daemon.kill("SIGKILL");
    await daemon.exited;
  }
  // Whatever the daemon left mounted under its data root (it unmounts on a clean stop).
  const mounts = (await readFile("/proc/self/mounts", "utf8"))
    .split("\n")
    .map((l) => l.split(" ")[1] ?? "")
    .filter((m) => m.startsWith(work))
    .reverse();
  for (const m of mounts) await run(["umount", "-l", m]);
}

// ---------------------------------------------------------------------------------------------
// Images
function debianMirror(): string {
  for (const file of ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]) {
    const text = existsSync(file) ? readFileSync(file, "utf8") : "";
    const m = /^URIs:\s*(\S+\/debian)\/?\s*$/m.exec(text) ?? /^deb\s+(?:\[[^\]]*\]\s+)?(\S+\/debian)\/?\s+/m.exec(text);
    if (m) return m[1]!;
  }
  return "http://deb.debian.org/debian";
}

async function buildImages(): Promise<void> {
  const rootfs = join(work, "rootfs");
  const mirror = debianMirror();
  say(`debian:bookworm-slim stand-in: debootstrap --variant=minbase bookworm from ${mirror}`);
  await must(["debootstrap", "--variant=minbase", "bookworm", rootfs, mirror], { timeoutMs: 15 * 60_000 });
  // As the registry's slim image: no package cache, lists or docs.
  await must([
    "sh",
    "-c",
    `cd ${rootfs} && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* usr/share/doc/* ` +
      `usr/share/man/* usr/share/locale/*`,
  ]);
  await must(["sh", "-c", `tar -C ${rootfs} -c . | docker import - debian:bookworm-slim`]);
  await rm(rootfs, { recursive: true, force: true });

  say("postgres:15-bookworm stand-in from Debian's postgresql-15");
  await must(["docker", "build", "--network", "host", "-t", "postgres:15-bookworm", join(import.meta.dir, "postgres")]);

  say("oven/bun:1.4.5 stand-in from this machine's bun");
  const bunCtx = join(work, "bun");
  await mkdir(bunCtx);
  await copyFile(join(import.meta.dir, "bun", "Dockerfile"), join(bunCtx, "Dockerfile"));
  await copyFile(process.execPath, join(bunCtx, "bun"));
  await copyFile(
    process.env.NODE_EXTRA_CA_CERTS || "/etc/ssl/certs/ca-certificates.crt",
    join(bunCtx, "ca-certificates.crt"),
  );
  await must(["docker", "build", "--network", "host", "-t", "oven/bun:1.4.5", bunCtx]);
  await rm(bunCtx, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// The project, as an operator has it: the repository's files (not node_modules, dist, backups).
const project = join(work, "project");
async function copyProject(): Promise<void> {
  await mkdir(project);
  const listed = await run(["git", "ls-files", "-co", "--exclude-standard"], { cwd: root });
  if (listed.code === 0) {
    const files = listed.out.split("\n").filter((f) => f && existsSync(join(root, f)));
    await must(["tar", "-C", root, "-c", "-T", "-", "-f", join(work, "project.tar")], { stdin: files.join("\n") });
  } else {
    // Not a git checkout: everything but what git would ignore anyway.
    await must([
      "tar",
      "-C",
      root,
      "-c",
      "-f",
      join(work, "project.tar"),
      "--exclude=./node_modules",
      "--exclude=./dist",
      "--exclude=./backups",
      "--exclude=./.git",
      ".",
    ]);
  }
  await must(["tar", "-C", project, "-x", "-f", join(work, "project.tar")]);
  await rm(join(work, "project.tar"));
}

const composeCmd = which("docker-compose") ? ["docker-compose"] : ["docker", "compose"];
let stackEnv: Record<string, string> = {};
const compose = (args: string[]) => must([...composeCmd, ...args], { cwd: project, env: stackEnv });

/** A runbook command, as the README writes it (checked), run in the stack. */
async function runbook(command: string, expectCode = 0): Promise<Run> {
  check(readmeLines.has(command), `the README's compose runbook does not show: ${command}`);
  const args = command.split(/\s+/);
  check(args[0] === "docker", `not a docker command: ${command}`);
  const r = await run(args, { cwd: project, env: stackEnv });
  if (r.code !== expectCode)
    throw new Failure(
      `${command} exited ${r.code} (expected ${expectCode})\n${r.out.slice(-3000)}\n${r.err.slice(-3000)}`,
    );
  say(`✔ ${command}`);
  return r;
}

const psql = (sql: string) =>
  must([
    "docker",
    "exec",
    "shinkei-postgres",
    "psql",
    "-U",
    "postgres",
    "-d",
    "shinkei",
    "-AtX",
    "-v",
    "ON_ERROR_STOP=1",
    "-c",
    sql,
  ]);

async function health(): Promise<Record<string, string>> {
  const out = await must(["docker", "ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
  return Object.fromEntries(
    out
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => {
        const [name, ...rest] = l.split(" ");
        const status = rest.join(" ");
        return [name!, /\(healthy\)/.test(status) ? "healthy" : /\(unhealthy\)/.test(status) ? "unhealthy" : status];
      }),
  );
}

async function untilHealthy(timeoutMs = 180_000): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const h = await health();
    const names = ["shinkei-postgres", "shinkei-backend", "shinkei-backup"];
    if (names.every((n) => h[n] === "healthy")) return performance.now() - t0;
    if (
      performance.now() - t0 > timeoutMs ||
      names.some((n) => h[n] === "unhealthy" || /Exited|Restarting/.test(h[n] ?? ""))
    ) {
      const logs = await Promise.all(
        names.map(
          async (n) =>
            `--- ${n}: ${h[n]}\n${(await run(["docker", "logs", "--tail", "30", n])).err.slice(-2500)}` +
            (await run(["docker", "logs", "--tail", "30", n])).out.slice(-2500),
        ),
      );
      throw new Failure(`the stack did not become healthy: ${JSON.stringify(h)}\n${logs.join("\n")}`);
    }
    await Bun.sleep(1000);
  }
}

let appUrl = "";
async function api(path: string, body: unknown): Promise<{ status: number; json: any }> {
  const r = await fetch(`${appUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, json: await r.json().catch(() => null) };
}

/** Every table, view and sequence in public belongs to the app role. */
async function ownedByApp(): Promise<void> {
  const owners = (
    await psql(
      "select distinct pg_get_userbyid(c.relowner) from pg_class c join pg_namespace n on n.oid = " +
        "c.relnamespace where n.nspname = 'public' and c.relkind in ('r','p','S','v','m')",
    )
  ).trim();
  check(owners === "shinkei_app", `tables in public belong to ${owners.replaceAll("\n", ", ")}, not only shinkei_app`);
}

/** The three phrases typed into `reset` in a real terminal (tmux), as an operator does. */
async function resetInTerminal(command: string): Promise<string> {
  check(readmeLines.has(command), `the README's compose runbook does not show: ${command}`);
  const tmux = `shinkei-compose-${crypto.randomUUID().slice(0, 8)}`;
  const screen = async () => (await run(["tmux", "-L", tmux, "capture-pane", "-p", "-S", "-200"])).out;
  const waitFor = async (text: string) => {
    for (let i = 0; i < 600; i++) {
      const s = await screen();
      if (s.includes(text)) return s;
      await Bun.sleep(100);
    }
    throw new Failure(`reset: timed out waiting for "${text}"; screen:\n${await screen()}`);
  };
  await must(
    [
      "tmux",
      "-L",
      tmux,
      "new-session",
      "-d",
      "-x",
      "200",
      "-y",
      "60",
      `DOCKER_HOST=${dockerEnv.DOCKER_HOST} ${command}; echo "__EXIT=$?"; sleep 600`,
    ],
    { cwd: project },
  );
  try {
    for (const phrase of ["DELETE ALL DATA", "YES I AM SURE", "YES"]) {
      await waitFor(`Type ${phrase} to continue`);
      await run(["tmux", "-L", tmux, "send-keys", "-l", phrase]);
      await run(["tmux", "-L", tmux, "send-keys", "Enter"]);
      await Bun.sleep(300);
    }
    const s = await waitFor("__EXIT=");
    check(s.includes("__EXIT=0"), `reset failed in the terminal:\n${s}`);
    say(`✔ ${command} (three phrases typed in a terminal)`);
    return s;
  } finally {
    await run(["tmux", "-L", tmux, "kill-server"]);
  }
}

// ---------------------------------------------------------------------------------------------
async function walk(): Promise<void> {
  await buildImages();
  say("shinkei:local from the Dockerfile (PG_SOURCE=debian PG_MAJOR=15: Debian bookworm carries PostgreSQL 15 only)");
  await copyProject();
  const t0 = performance.now();
  await must([
    "docker",
    "build",
    "--network",
    "host",
    "--build-arg",
    "PG_MAJOR=15",
    "--build-arg",
    "PG_SOURCE=debian",
    "-t",
    "shinkei:local",
    project,
  ]);
  const buildSeconds = (performance.now() - t0) / 1000;
  const size = Number((await must(["docker", "image", "inspect", "--format", "{{.Size}}", "shinkei:local"])).trim());

  const [pgPort, appPort, metricsPort] = [freePort(), freePort(), freePort()];
  stackEnv = {
    PG_MAJOR: "15",
    PG_SOURCE: "debian",
    POSTGRES_PORT: String(pgPort),
    PORT: String(appPort),
    METRICS_PORT: String(metricsPort),
    COOKIE_SECURE: "false",
  };
  appUrl = `http://127.0.0.1:${appPort}`;

  // A fresh volume, several times: whichever service migrates first, the app owns its tables.
  const upTimes: number[] = [];
  for (let i = 1; i <= 3; i++) {
    const up = performance.now();
    await compose(["up", "-d"]);
    await untilHealthy();
    upTimes.push(performance.now() - up);
    await ownedByApp();
    const backendLog = (await run(["docker", "logs", "shinkei-backend"])).out;
    check(
      !/permission denied/.test(backendLog),
      `fresh volume ${i}: the backend logged permission denied:\n${backendLog.slice(-2000)}`,
    );
    const r = await api("/api/v1/auth/login", { email: "nobody@example.com", password: "x".repeat(12) });
    check(r.status === 401, `fresh volume ${i}: login of an unknown address answered ${r.status}`);
    say(`fresh volume ${i}: up -d to all healthy in ${(upTimes.at(-1)! / 1000).toFixed(1)}s, tables the app role's`);
    if (i < 3) await compose(["down", "-v"]);
  }
  const project_ = (
    await must([
      "docker",
      "inspect",
      "--format",
      '{{index .Config.Labels "com.docker.compose.project"}}',
      "shinkei-backend",
    ])
  ).trim();
  check(project_ === "shinkei", `the compose project is "${project_}", not shinkei (COMPOSE_PROJECT_NAME in .env)`);
  check(
    (await must(["docker", "volume", "ls", "--format", "{{.Name}}"])).split("\n").includes("shinkei_pgdata"),
    "no volume shinkei_pgdata",
  );

  // Published on loopback only.
  const ports = await must(["docker", "ps", "--format", "{{.Ports}}"]);
  check(!/0\.0\.0\.0:|:::/.test(ports), `a port is published beyond loopback: ${ports}`);
  const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  check(
    metrics.status === 200 && (await metrics.text()).includes("shinkei_"),
    `/metrics on 127.0.0.1:${metricsPort} answered ${metrics.status}`,
  );
  const page = await fetch(`http://127.0.0.1:${metricsPort}/`);
  check(page.status === 200, `the status page on 127.0.0.1:${metricsPort} answered ${page.status}`);
  say(`✔ /metrics and the status page on 127.0.0.1:${metricsPort}`);

  // Register and login; an unknown address is refused and creates nothing.
  const reg = await api("/api/v1/auth/register", {
    email: "operator@example.com",
    password: "correct horse battery staple",
    name: "Operator",
  });
  check(reg.status === 201, `register answered ${reg.status}: ${JSON.stringify(reg.json)}`);
  const login = await api("/api/v1/auth/login", {
    email: "operator@example.com",
    password: "correct horse battery staple",
  });
  check(login.status === 200 && login.json?.token, `login answered ${login.status}`);
  const usersBefore = (await psql("select count(*) from users")).trim();
  const unknown = await api("/api/v1/auth/login", {
    email: "stranger@example.com",
    password: "correct horse battery staple",
  });
  check(unknown.status === 401, `login of an unknown address answered ${unknown.status}`);
  check((await psql("select count(*) from users")).trim() === usersBefore, "login of an unknown address created a row");
  check(
    (await psql("select count(*) from users where email = 'stranger@example.com'")).trim() === "0",
    "the unknown address has a row",
  );
  say("✔ register + login; unknown address 401, no row");

  // The runbook.
  const taken = await runbook("docker exec shinkei-backup shinkei backup");
  const file = /backup\s+\/backups\/(shinkei_backup_\S+\.sql\.zst)/.exec(taken.out)?.[1];
  check(file, `no backup named in:\n${taken.out}`);
  const list = await runbook("docker exec shinkei-backup shinkei backup --list");
  check(list.out.includes(file), "--list does not show the new backup");
  const fromBackend = await run(["docker", "exec", "shinkei-backend", "shinkei", "backup", "--list"]);
  check(
    fromBackend.code === 0 && fromBackend.out.includes(file),
    `the backend cannot read the backups:\n${fromBackend.out}${fromBackend.err}`,
  );
  const ready = await fetch(`${appUrl}/ready`).then((r) => r.json() as Promise<any>);
  // /ready gives anyone the newest backup's age, never its name: a fresh one, seen from the backend.
  check(
    typeof ready.backup?.ageSeconds === "number" &&
      ready.backup.ageSeconds < 600 &&
      !JSON.stringify(ready).includes(file.split("/").pop()!),
    `/ready does not see the backup (or names it): ${JSON.stringify(ready)}`,
  );
  say("✔ the backend reads the backups (--list, /ready)");
  await runbook("docker exec shinkei-backup shinkei backup verify");
  await api("/api/v1/auth/register", {
    email: "after-backup@example.com",
    password: "correct horse battery staple",
    name: "Later",
  });
  const restored = await runbook(
    "docker exec shinkei-backup shinkei backup --restore --yes --confirm-database shinkei --allow-production",
  );
  check(
    (await psql("select count(*) from users where email = 'after-backup@example.com'")).trim() === "0",
    "the restore did not bring back the backup's state",
  );
  await ownedByApp();
  const undo = /undo with\s+(shinkei backup --restore .*)$/m.exec(restored.out)?.[1];
  check(
    undo?.endsWith("--yes --confirm-database shinkei --allow-production"),
    `the printed undo command is not runnable as printed: ${undo}`,
  );
  await must(["docker", "exec", "shinkei-backup", ...undo!.split(/\s+/)]);
  check(
    (await psql("select count(*) from users where email = 'after-backup@example.com'")).trim() === "1",
    "the printed undo command did not bring the later row back",
  );
  say("✔ the printed undo command, as printed");
  check(
    (await api("/api/v1/auth/login", { email: "operator@example.com", password: "correct horse battery staple" }))
      .status === 200,
    "login after the restore failed",
  );

  await runbook("docker exec shinkei-backup shinkei backup base");
  // As an operator reads it: the window opens once the WAL through the base backup's end has
  // arrived and been sealed (seconds); until then pitr status says "none".
  // The app keeps writing meanwhile (as a live one does), so WAL after the base backup arrives.
  for (let i = 0; ; i++) {
    const r = await runbook("docker exec shinkei-backup shinkei pitr status");
    if (/^window\s+\d{4}-/m.test(r.out)) break;
    check(i < 30, `pitr status shows no window a minute after backup base:\n${r.out}`);
    await api("/api/v1/auth/login", { email: "operator@example.com", password: "correct horse battery staple" });
    await Bun.sleep(2000);
  }
  const pitr = await runbook("docker exec shinkei-backup shinkei pitr restore --to latest --stop");
  check(/scratch instance stopped and removed/.test(pitr.out), `pitr restore did not stop its instance:\n${pitr.out}`);
  const applied = await runbook(
    "docker exec shinkei-backup shinkei pitr restore --to latest --apply --yes --confirm-database shinkei " +
      "--allow-production",
  );
  check(RUNNABLE_UNDO.test(applied.out), `pitr restore --apply printed no runnable undo line:\n${applied.out}`);
  await ownedByApp();
  check(
    (await api("/api/v1/auth/login", { email: "operator@example.com", password: "correct horse battery staple" }))
      .status === 200,
    "login after pitr restore --apply failed",
  );
  await runbook("docker exec shinkei-backup shinkei pitr drill");
  await runbook("docker exec shinkei-backup shinkei backup drill");
  await runbook("docker exec shinkei-backup shinkei backup check");
  const zombies = (
    await run([
      "docker",
      "exec",
      "shinkei-backup",
      "sh",
      "-c",
      "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l",
    ])
  ).out.trim();
  check(zombies === "0", `${zombies} zombie process(es) in shinkei-backup after the pitr runs`);
  say("✔ no zombies after pitr runs (init: true)");

  // Reset, typed in a terminal, from the container the README names; the app keeps working.
  const reset = await resetInTerminal("docker exec -it shinkei-backup shinkei reset --allow-production");
  check(RUNNABLE_UNDO.test(reset), `reset's undo line is not runnable as printed:\n${reset}`);
  await ownedByApp();
  const alice = await api("/api/v1/auth/login", { email: "alice@example.com", password: "shinkei-demo-alice" });
  check(alice.status === 200, `login after reset answered ${alice.status}: ${JSON.stringify(alice.json)}`);
  say("✔ login after reset");

  // PostgreSQL restarts under the WAL stream: the receiver comes back, no gap, the app answers.
  await runbook("docker restart shinkei-postgres");
  await untilHealthy();
  await psql("create temporary table t as select 1; select pg_switch_wal()");
  for (let i = 0; ; i++) {
    const r = await run(["docker", "exec", "shinkei-backup", "shinkei", "backup", "check"]);
    if (r.code === 0) break;
    check(i < 60, `backup check still fails after postgres restarted:\n${r.out}${r.err}`);
    await Bun.sleep(2000);
  }
  check(
    (await api("/api/v1/auth/login", { email: "alice@example.com", password: "shinkei-demo-alice" })).status === 200,
    "login after the postgres restart failed",
  );
  say("✔ postgres restarted under the stream: receiver back, backup check passes, login works");

  // down + up keeps the data.
  const usersNow = (await psql("select count(*) from users")).trim();
  await compose(["down"]);
  await compose(["up", "-d"]);
  await untilHealthy();
  check((await psql("select count(*) from users")).trim() === usersNow, "down + up lost rows");
  check(
    (await api("/api/v1/auth/login", { email: "alice@example.com", password: "shinkei-demo-alice" })).status === 200,
    "login after down + up failed",
  );
  check(
    (await run(["docker", "exec", "shinkei-backup", "shinkei", "backup", "--list"])).out.includes(file),
    "down + up lost the backups",
  );
  say("✔ down + up keeps the data and the backups");

  // The upgrade step for a volume made before these fixes: the backup role lost its grant and owns a
  // table (a race lost before the fix); the README's command puts both right.
  await psql(
    "revoke execute on function pg_create_restore_point(text) from shinkei_backup; alter table " +
      "login_throttle owner to shinkei_backup",
  );
  await runbook("docker exec shinkei-postgres bash /docker-entrypoint-initdb.d/10-app-role.sh");
  await ownedByApp();
  check(
    (
      await psql("select has_function_privilege('shinkei_backup', 'pg_create_restore_point(text)', 'EXECUTE')")
    ).trim() === "t",
    "the upgrade step did not grant pg_create_restore_point",
  );
  say("✔ the README's upgrade step for an older volume");

  console.log("");
  console.log(
    `image shinkei:local          ${(size / 1024 / 1024).toFixed(0)} MiB (built in ${buildSeconds.toFixed(0)}s)`,
  );
  console.log(
    `up -d to all healthy         ${upTimes.map((t) => `${(t / 1000).toFixed(1)}s`).join(", ")} (three fresh volumes)`,
  );
}

const reason = skipReason();
if (reason) {
  console.log(`compose test skipped: ${reason}`);
  await rm(work, { recursive: true, force: true });
  process.exit(0);
}
let cleaned: Promise<void> | undefined;
/** The stack, the daemon and every folder this run made: once, on the way out or on a signal. */
const cleanup = () =>
  (cleaned ??= (async () => {
    if (daemon && daemon.exitCode === null)
      await run([...composeCmd, "down", "-v", "--remove-orphans"], {
        cwd: project,
        env: stackEnv,
        timeoutMs: 120_000,
      }).catch(() => {});
    await stopDaemon();
    await rm(work, { recursive: true, force: true }).catch((e) =>
      console.error(`could not remove ${work}: ${e.message}`),
    );
  })());
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    console.error(`compose test interrupted (${signal}): removing the stack and the daemon`);
    void cleanup().finally(() => process.exit(130));
  });
}
let code = 0;
try {
  const notHere = await startDaemon();
  if (notHere) {
    console.log(`compose test skipped: ${notHere}`);
  } else {
    await walk();
    console.log(`compose test passed in ${((performance.now() - started) / 1000).toFixed(0)}s`);
  }
} catch (e) {
  code = 1;
  console.error(`compose test FAILED: ${e instanceof Failure ? e.message : (e as Error).stack}`);
} finally {
  await cleanup();
}
process.exit(code);
