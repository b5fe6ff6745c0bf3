import { afterAll, beforeAll, expect, test } from "bun:test";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import postgres from "postgres";
import { shinkei, takeBackup } from "./support/cli.ts";
import { freshDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { tempDir } from "./support/fixtures.ts";
import { migrate } from "../src/migrations/migrate.ts";

const root = join(import.meta.dir, "..");

type Service = {
  environment?: Record<string, string>;
  container_name?: string;
  command?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  volumes?: string[];
  profiles?: string[];
  image?: string;
};

test("compose.yaml: the services, names, health checks and volumes the runbooks expect", async () => {
  const compose = Bun.YAML.parse(await Bun.file(join(root, "compose.yaml")).text()) as {
    services: Record<string, Service>;
    volumes: Record<string, unknown>;
  };
  const s = compose.services;
  expect(s.postgres!.container_name).toBe("shinkei-postgres");
  expect(s.backend!.container_name).toBe("shinkei-backend");
  expect(s.backup!.container_name).toBe("shinkei-backup");
  expect(s.postgres!.image).toMatch(/^postgres:/);
  expect(s.postgres!.healthcheck!.test.join(" ")).toContain("pg_isready");
  expect(s.postgres!.volumes).toContain("pgdata:/var/lib/postgresql/data");
  expect(Object.keys(compose.volumes)).toContain("pgdata");
  for (const name of ["backend", "backup"]) expect(s[name]!.depends_on!.postgres!.condition).toBe("service_healthy");
  expect(s.backup!.volumes).toContain("backups:/backups");
  expect(s.backend!.volumes).toContain("backups:/backups:ro");
  expect(s.minio!.profiles).toEqual(["minio"]);
});

test("compose.yaml fits Compose v1 and v2: no top-level name, project named in .env, volumes named", async () => {
  const text = await Bun.file(join(root, "compose.yaml")).text();
  const compose = Bun.YAML.parse(text) as {
    name?: string;
    services: Record<string, Service & { init?: boolean; user?: string; ports?: string[] }>;
    volumes: Record<string, { name: string }>;
  };
  // docker-compose 1.29 refuses a top-level `name:`.
  expect(compose.name).toBeUndefined();
  const env = await Bun.file(join(root, ".env")).text();
  expect(env).toMatch(/^COMPOSE_PROJECT_NAME=shinkei$/m);
  // The committed .env holds no secret: only the project's name (and comments).
  expect(env.split("\n").filter((l) => l.trim() && !l.startsWith("#"))).toEqual(["COMPOSE_PROJECT_NAME=shinkei"]);
  expect(compose.volumes.pgdata!.name).toBe("shinkei_pgdata");
  expect(compose.volumes.backups!.name).toBe("shinkei_backups");
  const s = compose.services;
  // PID 1 reaps (scratch recoveries start and stop servers), and both of ours run as the image's user.
  for (const name of ["postgres", "backend", "backup"]) expect(s[name]!.init).toBe(true);
  for (const name of ["backend", "backup"]) expect(s[name]!.user).toBeUndefined();
  // Every published port is on loopback unless the operator says otherwise.
  const ports = Object.values(s).flatMap((svc) => svc.ports ?? []);
  expect(ports.length).toBeGreaterThan(3);
  for (const p of ports) expect(withDefaults(p)).toStartWith("127.0.0.1:");
  expect(withDefaults(s.backup!.ports!.join(" "))).toContain("127.0.0.1:9187:9187");
  expect(s.backup!.environment!.METRICS_PORT).toBe("9187");
  // A health check that reports within a minute.
  const hc = s.backup!.healthcheck as { test: string[]; interval: string; start_period: string };
  expect(hc.test).toEqual(["CMD", "shinkei", "backup", "check", "--live"]);
  expect(parseInt(hc.interval)).toBeLessThanOrEqual(30);
});

test("compose.yaml runs only commands the binary accepts", async () => {
  const compose = Bun.YAML.parse(await Bun.file(join(root, "compose.yaml")).text()) as {
    services: Record<string, Service>;
  };
  const ours = Object.values(compose.services).filter((svc) => svc.image === "shinkei:local");
  expect(ours.length).toBe(2);
  for (const svc of ours) {
    const r = await shinkei([...svc.command!, "--help"]);
    expect(r).toSucceed();
    expect(r.stdout).toStartWith(`Usage: shinkei ${svc.command![0]}`);
    const check = svc.healthcheck?.test.slice(1) ?? [];
    if (check[0] === "shinkei") expect(await shinkei([...check.slice(1), "--help"])).toSucceed();
  }
});

test("the Dockerfile builds the binary the way bun run build does and installs matching client tools", async () => {
  const docker = await Bun.file(join(root, "Dockerfile")).text();
  const pkg = await Bun.file(join(root, "package.json")).json();
  expect(pkg.scripts.build).toContain("bun build --compile --minify --bytecode --splitting --format=esm cli/main.ts");
  expect(docker).toContain("bun build --compile --minify --bytecode --splitting --format=esm cli/main.ts");
  expect(docker).toContain("postgresql-client-${PG_MAJOR}");
  expect(docker).toContain('"postgresql-${PG_MAJOR}"');
  const compose = await Bun.file(join(root, "compose.yaml")).text();
  expect(compose).toContain("image: postgres:${PG_MAJOR:-17}");
  expect(compose).toContain("PG_MAJOR: ${PG_MAJOR:-17}");
  expect(docker).toContain("ARG PG_MAJOR=17");
  // From the PostgreSQL repository by default, from Debian alone when asked; nothing but apt fetches.
  expect(docker).toContain("ARG PG_SOURCE=pgdg");
  expect(compose).toContain("PG_SOURCE: ${PG_SOURCE:-pgdg}");
  expect(docker).not.toMatch(/\bcurl -|\bwget\b|gpg --dearmor/);
  // No cluster made at install: the image's server binaries serve scratch recoveries only.
  expect(docker).toContain("create_main_cluster = false");
});

/** What compose makes of `${VAR:-default}` when VAR is unset. */
const withDefaults = (text: string) => text.replace(/\$\{[A-Z0-9_]+:-([^}]*)\}/g, "$1");

test("compose.yaml: the app connects as the app role, the backup service as the backup role", async () => {
  const compose = Bun.YAML.parse(await Bun.file(join(root, "compose.yaml")).text()) as {
    services: Record<string, Service>;
  };
  const pg = compose.services.postgres!;
  expect(pg.volumes).toContain("./docker/initdb:/docker-entrypoint-initdb.d:ro");
  const script = join(root, "docker", "initdb", "10-app-role.sh");
  expect((await stat(script)).mode & 0o111).not.toBe(0);
  const appUser = withDefaults(pg.environment!.POSTGRES_APP_USER!);
  expect(appUser).not.toBe(withDefaults(pg.environment!.POSTGRES_USER!));
  const roles = {
    backend: ["POSTGRES_APP_USER", "POSTGRES_APP_PASSWORD"],
    backup: ["POSTGRES_BACKUP_USER", "POSTGRES_BACKUP_PASSWORD"],
  } as const;
  for (const [name, [user, password]] of Object.entries(roles)) {
    const url = new URL(withDefaults(compose.services[name]!.environment!.DATABASE_URL!));
    expect(url.username).toBe(withDefaults(pg.environment![user]!));
    expect(decodeURIComponent(url.password)).toBe(withDefaults(pg.environment![password]!));
  }
  expect(withDefaults(pg.environment!.POSTGRES_BACKUP_USER!)).not.toBe(appUser);
});

/*
 * The init script's tests run on a server of this file's own: the script gives the app's database
 * to the app's role (ALTER DATABASE ... OWNER), a change to pg_database that a superuser's restore
 * running meanwhile in another test file (bun test --parallel) would have to count as its own.
 */
let cluster: TestCluster;
let serverUrl: string;
beforeAll(async () => {
  cluster = await startCluster();
  serverUrl = cluster.url();
});
afterAll(async () => {
  await cluster?.stop();
});

/** Run the init script as the postgres image would, against a database on the test server. */
function runInitScript(database: string, appUser: string, backupUser = `${appUser}_backup`) {
  const server = new URL(serverUrl);
  return Bun.spawnSync(["bash", join(root, "docker", "initdb", "10-app-role.sh")], {
    env: {
      PATH: process.env.PATH!,
      PGHOST: server.hostname,
      PGPORT: server.port || "5432",
      PGPASSWORD: decodeURIComponent(server.password),
      POSTGRES_USER: decodeURIComponent(server.username),
      POSTGRES_DB: database,
      POSTGRES_APP_USER: appUser,
      POSTGRES_APP_PASSWORD: `pw-${crypto.randomUUID()}`,
      POSTGRES_BACKUP_USER: backupUser,
      POSTGRES_BACKUP_PASSWORD: `pw-${crypto.randomUUID()}`,
    },
    stdout: "pipe",
    stderr: "pipe",
  });
}

test("the init script makes a login role that is no superuser, owns the app's database, and runs the app", async () => {
  const db = await freshDatabase("initdb", serverUrl);
  const appUser = `shinkei_app_${crypto.randomUUID().slice(0, 8)}`;
  const backupUser = `${appUser}_backup`;
  const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
  try {
    // A volume from before the script: the superuser made the app's tables.
    await migrate(db.sql);
    for (let run = 0; run < 2; run++) {
      const r = runInitScript(db.name, appUser);
      expect(r.stderr.toString()).toBe("");
      expect(r.exitCode).toBe(0);
    }
    const [role] =
      await admin`select rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls from pg_roles
        where rolname = ${appUser}`;
    expect(role).toEqual({
      rolsuper: false,
      rolcanlogin: true,
      rolcreatedb: true,
      rolcreaterole: false,
      rolreplication: false,
      rolbypassrls: false,
    });
    const [backupRole] =
      await admin`select rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,
        pg_has_role(rolname, ${appUser}, 'MEMBER') as member,
      pg_has_role(rolname, 'pg_read_all_stats', 'MEMBER') as stats from pg_roles where rolname = ${backupUser}`;
    expect(backupRole).toEqual({
      rolsuper: false,
      rolcanlogin: true,
      rolcreatedb: true,
      rolcreaterole: false,
      rolreplication: true,
      rolbypassrls: false,
      member: true,
      stats: true,
    });
    const [owner] = await admin`select pg_get_userbyid(datdba) as name from pg_database where datname = ${db.name}`;
    expect(owner!.name).toBe(appUser);
    const notOurs = await db.sql`select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm', 'S')
        and pg_get_userbyid(c.relowner) <> ${appUser}`;
    expect(notOurs.map((r) => r.relname as string)).toEqual([]);

    // The app as that role: status, migrations and a backup work, and it is not a superuser.
    const url = new URL(db.url);
    url.username = appUser;
    url.password = "";
    const app = postgres(url.toString(), { max: 1, onnotice: () => {} });
    try {
      const [who] = await app`select current_user as name, current_setting('is_superuser') as superuser`;
      expect(who).toEqual({ name: appUser, superuser: "off" });
      await app`create table public.made_by_app (x int)`;
      await app`drop table public.made_by_app`;
    } finally {
      await app.end();
    }
    const env = { DATABASE_URL: url.toString(), BACKUP_DIR: await tempDir("initdb-backup") };
    expect(await shinkei(["migrate"], env)).toSucceed();
    expect(await takeBackup(env)).toMatch(/shinkei_backup_\S+\.sql\.zst$/);

    // The backup service's role backs up and restores; what it restores still belongs to the app.
    const backupUrl = new URL(url);
    backupUrl.username = backupUser;
    const backupEnv = { ...env, DATABASE_URL: backupUrl.toString() };
    await takeBackup(backupEnv);
    const restored = await shinkei(["backup", "--restore", "--yes", "--confirm-database", db.name], backupEnv);
    expect(restored.stderr).toBe("");
    expect(restored).toSucceed();
    const owners = await db.sql`select distinct pg_get_userbyid(c.relowner) as owner from pg_class c join pg_namespace n
        on n.oid = c.relnamespace
      where n.nspname = 'public' and c.relkind in ('r', 'p')`;
    expect(owners.map((r) => r.owner as string)).toEqual([appUser]);
  } finally {
    await db.drop();
    await admin`drop role if exists ${admin(backupUser)}`;
    await admin`drop role if exists ${admin(appUser)}`;
    await admin.end();
  }
});

test("whichever role migrates or resets, the app role owns all tables; backup may mark restore points", async () => {
  const db = await freshDatabase("initdb-race", serverUrl);
  const appUser = `shinkei_app_${crypto.randomUUID().slice(0, 8)}`;
  const backupUser = `${appUser}_backup`;
  const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
  const owners = async () =>
    (
      await db.sql`select distinct pg_get_userbyid(c.relowner) as owner from pg_class c join pg_namespace n
        on n.oid = c.relnamespace
      where n.nspname = 'public' and c.relkind in ('r', 'p', 'S', 'v', 'm')`
    ).map((r) => r.owner as string);
  try {
    const r = runInitScript(db.name, appUser);
    expect(r.stderr.toString()).toBe("");
    // Granted in the app's database (functions' privileges are per database), where drills run.
    const [grant] =
      await db.sql`select has_function_privilege(${backupUser}, 'pg_catalog.pg_create_restore_point(text)',
        'EXECUTE') as backup,
      has_function_privilege(${appUser}, 'pg_catalog.pg_create_restore_point(text)', 'EXECUTE') as app`;
    expect(grant).toEqual({ backup: true, app: false });
    const asRole = (user: string) => {
      const url = new URL(db.url);
      url.username = user;
      url.password = "";
      return { DATABASE_URL: url.toString(), BACKUP_DIR: "" };
    };
    const backupEnv = { ...asRole(backupUser), BACKUP_DIR: await tempDir("race-backup") };
    // The backup service won the race on a fresh volume: the tables are the app's all the same.
    expect(await shinkei(["migrate"], backupEnv)).toSucceed();
    expect(await owners()).toEqual([appUser]);
    // The app (its own role) uses and migrates them.
    const app = postgres(asRole(appUser).DATABASE_URL, { max: 1, onnotice: () => {} });
    try {
      await app`select count(*) from login_throttle`;
    } finally {
      await app.end();
    }
    expect(await shinkei(["status"], asRole(appUser))).toSucceed();
    // A reset from the backup service's container rebuilds the schema as the app's too.
    const reset = await shinkei(["reset", "--force", "--confirm-database", db.name, "--no-seed"], backupEnv);
    expect(reset.stderr).toBe("");
    expect(reset).toSucceed();
    expect(reset.stdout).toMatch(
      new RegExp(`undo with\\s+shinkei backup --restore --backup-file \\S+ --yes --confirm-database ${db.name}\n`),
    );
    expect(await owners()).toEqual([appUser]);
  } finally {
    await db.drop();
    await admin`drop role if exists ${admin(backupUser)}`;
    await admin`drop role if exists ${admin(appUser)}`;
    await admin.end();
  }
});

test("compose.yaml: postgres lets the backup service replicate with a bounded slot, which streams WAL", async () => {
  const compose = Bun.YAML.parse(await Bun.file(join(root, "compose.yaml")).text()) as {
    services: Record<string, Service & { environment?: Record<string, string> }>;
  };
  const pg = compose.services.postgres!;
  expect(pg.command!.join(" ")).toContain("max_slot_wal_keep_size=${MAX_SLOT_WAL_KEEP_SIZE:-10GB}");
  expect(pg.volumes).toContain("./docker/initdb:/docker-entrypoint-initdb.d:ro");
  expect(compose.services.backup!.environment!.WAL_ARCHIVE).toBe("${WAL_ARCHIVE:-stream}");
  // The init script, run as the image runs it: a replication line, added once.
  const script = join(root, "docker", "initdb", "20-replication.sh");
  const pgdata = await tempDir("hba");
  await Bun.write(join(pgdata, "pg_hba.conf"), "local all all trust\nhost all all all scram-sha-256\n");
  for (let i = 0; i < 2; i++)
    expect(Bun.spawnSync(["sh", script], { env: { PATH: process.env.PATH!, PGDATA: pgdata } }).exitCode).toBe(0);
  const hba = await Bun.file(join(pgdata, "pg_hba.conf")).text();
  expect(hba.match(/^host replication all all scram-sha-256$/gm)?.length).toBe(1);
  expect(Bun.spawnSync(["sh", script], { env: { PATH: process.env.PATH! } }).exitCode).not.toBe(0);
});
