import { existsSync } from "node:fs";
import { chmod, chown, mkdir, open, readFile, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import postgres from "postgres";
import { ShinkeiError } from "../errors.ts";
import { findServerBinaries } from "./bin.ts";

/**
 * Zero-setup local runs: when DATABASE_URL is unset and nothing answers on 127.0.0.1:5432,
 * shinkei runs a PostgreSQL cluster of its own in ./data/postgres, on loopback only, with the
 * server binaries already on the machine. It persists between runs; whoever started it stops it.
 * Loopback is not enough on a shared machine (every local user can connect), so the cluster
 * takes a generated password (scram-sha-256), kept in ./data/postgres.password with mode 0600.
 * Never in production: there a missing database is an outage to report, not to paper over.
 */
export type LocalCluster = { url: string; dataDir: string; started: boolean; stop(): Promise<void> };

export const DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/shinkei";

export async function portOpen(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((done) => {
    const timer = setTimeout(() => done(false), timeoutMs);
    Bun.connect({
      hostname: host,
      port,
      socket: {
        open(s) {
          clearTimeout(timer);
          s.end();
          done(true);
        },
        data() {},
        connectError() {
          clearTimeout(timer);
          done(false);
        },
      },
    }).catch(() => (clearTimeout(timer), done(false)));
  });
}

/** PostgreSQL will not run as root: as root, run its tools as the `postgres` user. */
export async function runAs(): Promise<{ prefix: string[]; uid?: number; gid?: number }> {
  if (process.getuid?.() !== 0) return { prefix: [] };
  const id = Bun.spawnSync(["id", "-u", "postgres"]);
  const gid = Bun.spawnSync(["id", "-g", "postgres"]);
  if (id.exitCode !== 0) {
    throw new ShinkeiError(
      "DB_UNREACHABLE",
      "PostgreSQL refuses to run as root, and there is no postgres user to run it as",
      {
        hint: "Run shinkei as a normal user, create a postgres user, or set DATABASE_URL.",
      },
    );
  }
  return {
    prefix: ["runuser", "-u", "postgres", "--"],
    uid: Number(id.stdout.toString()),
    gid: Number(gid.stdout.toString()),
  };
}

async function run(cmd: string[], input?: string): Promise<{ code: number; output: string }> {
  const p = Bun.spawn(cmd, {
    stdout: "pipe",
    stderr: "pipe",
    stdin: input === undefined ? "ignore" : new Blob([input]),
  });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, output: (err || out).trim().split("\n").slice(-3).join(" ") };
}

/** A loopback port nothing listens on right now: one the OS just gave out, let go again. */
export function freePort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

/** Only password logins, from loopback: what initdb writes for --auth=scram-sha-256, without the socket lines. */
const HBA =
  "# written by shinkei: password logins only\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all " +
  "::1/128 scram-sha-256\n";

/** The cluster's password: read it, or make one (mode 0600, never over an existing file). */
async function clusterPassword(file: string): Promise<{ password: string; created: boolean }> {
  if (existsSync(file)) return { password: (await readFile(file, "utf8")).trim(), created: false };
  const password = Buffer.from(crypto.getRandomValues(new Uint8Array(24))).toString("base64url");
  const handle = await open(file, "wx", 0o600).catch((e: NodeJS.ErrnoException) => {
    if (e.code === "EEXIST") return null; // another shinkei made it first
    throw e;
  });
  if (!handle) return clusterPassword(file);
  try {
    await handle.writeFile(password + "\n");
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { password, created: true };
}

/** Start (initialising on first use) the project-local cluster, or join it when it is already running. */
export async function ensureLocalCluster(
  root: string,
  env: Record<string, string | undefined> = process.env,
  environment = "development",
): Promise<LocalCluster> {
  if (environment === "production") {
    throw new ShinkeiError(
      "DB_UNREACHABLE",
      "nothing answers on 127.0.0.1:5432, and in production shinkei never starts a database of its own",
      {
        hint: "Set DATABASE_URL to the production database (or start the server it names).",
      },
    );
  }
  const bin = findServerBinaries(env);
  if (!bin) {
    throw new ShinkeiError(
      "DB_UNREACHABLE",
      "nothing answers on 127.0.0.1:5432 and no PostgreSQL server is installed to start one",
      {
        hint:
          "Start one with `docker compose up -d postgres`, install it (apt install postgresql, brew install " +
          "postgresql@17), or set DATABASE_URL.",
      },
    );
  }
  const dataDir = resolve(root, "data", "postgres");
  const as = await runAs();
  const portFile = join(dataDir, "shinkei.port");
  await mkdir(resolve(dataDir, ".."), { recursive: true, mode: 0o755 });
  const fresh = !existsSync(join(dataDir, "PG_VERSION"));
  // A cluster made by an older shinkei has no password file: it gets one now, and loses trust below.
  const { password, created } = await clusterPassword(join(dataDir, "..", "postgres.password"));

  if (fresh) {
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    if (as.uid !== undefined) await chown(dataDir, as.uid, as.gid!);
    await chmod(dataDir, 0o700);
    // The password goes in on stdin: no copy of it on disk that the postgres user must be able to read.
    const init = await run(
      [
        ...as.prefix,
        join(bin, "initdb"),
        "-D",
        dataDir,
        "-U",
        "postgres",
        "--auth=scram-sha-256",
        "--pwfile=/dev/stdin",
        "-E",
        "UTF8",
        "--no-locale",
      ],
      password + "\n",
    );
    if (init.code !== 0) {
      throw new ShinkeiError(
        "DB_UNREACHABLE",
        `could not create a local PostgreSQL cluster in ${dataDir}: ${init.output}`,
        {
          hint:
            "Check that the folder is writable (and reachable by the postgres user when running as root), or " +
            "set DATABASE_URL.",
        },
      );
    }
  }
  const port = existsSync(portFile) ? Number(await readFile(portFile, "utf8")) : freePort();
  await writeFile(portFile, String(port));
  const url = `postgres://postgres:${password}@127.0.0.1:${port}/shinkei`;
  const pgCtl = [...as.prefix, join(bin, "pg_ctl"), "-D", dataDir];

  const running = async () => (await run([...pgCtl, "status"])).code === 0 && (await portOpen("127.0.0.1", port));
  if (await running()) {
    if (created && !fresh) await dropTrust(dataDir, port, password, pgCtl);
    return { url, dataDir, started: false, stop: async () => {} };
  }

  // Loopback only, no unix socket: nothing outside this machine can reach it. initdb's pg_hba
  // already lets local users open replication connections.
  // A bounded slot budget: WAL_ARCHIVE=stream works here too, and never fills the disk.
  const options =
    `-c listen_addresses=127.0.0.1 -c port=${port} -c unix_socket_directories='' ` + "-c max_slot_wal_keep_size=1GB";
  const start = await run([...pgCtl, "start", "-w", "-t", "60", "-l", join(dataDir, "server.log"), "-o", options]);
  if (start.code !== 0) {
    // another shinkei started it first
    if (await running()) return { url, dataDir, started: false, stop: async () => {} };
    throw new ShinkeiError("DB_UNREACHABLE", `could not start the local PostgreSQL in ${dataDir}: ${start.output}`, {
      hint: `See ${join(dataDir, "server.log")}, or set DATABASE_URL.`,
    });
  }
  if (created && !fresh) await dropTrust(dataDir, port, password, pgCtl);
  return {
    url,
    dataDir,
    started: true,
    async stop() {
      await run([...pgCtl, "stop", "-m", "fast", "-w"]);
    },
  };
}

/** A cluster an older shinkei made with trust: set the password (trust still lets us in), then require it. */
async function dropTrust(dataDir: string, port: number, password: string, pgCtl: string[]): Promise<void> {
  const sql = postgres({ host: "127.0.0.1", port, user: "postgres", database: "postgres", max: 1, onnotice: () => {} });
  try {
    await sql.unsafe(`alter role postgres password '${password}'`); // base64url: no quote to escape
  } catch (e) {
    throw new ShinkeiError(
      "DB_UNREACHABLE",
      `cannot log in to the local PostgreSQL in ${dataDir} to give it a password: ${(e as Error).message}`,
      {
        hint:
          `Its password file ${join(dataDir, "..", "postgres.password")} is new: if an older one was ` +
          `deleted, restore it, or remove ${join(dataDir, "..")} to start afresh.`,
      },
    );
  } finally {
    await sql.end({ timeout: 5 });
  }
  await writeFile(join(dataDir, "pg_hba.conf"), HBA);
  const reload = await run([...pgCtl, "reload"]);
  if (reload.code !== 0)
    throw new ShinkeiError("DB_UNREACHABLE", `could not reload the local PostgreSQL in ${dataDir}: ${reload.output}`);
}
