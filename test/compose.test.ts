import { expect, test, setDefaultTimeout } from "bun:test";
import { join } from "node:path";
import { shinkei } from "./support/cli.ts";
import { tempDir } from "./support/fixtures.ts";

// Real databases, servers and processes: 5 s is too tight on a busy 2-core machine.
setDefaultTimeout(60_000);

const root = join(import.meta.dir, "..");

type Service = { container_name?: string; command?: string[]; depends_on?: Record<string, { condition: string }>; healthcheck?: { test: string[] }; volumes?: string[]; profiles?: string[]; image?: string };

test("compose.yaml: the services, names, health checks and volumes the runbooks expect", async () => {
  const compose = Bun.YAML.parse(await Bun.file(join(root, "compose.yaml")).text()) as { services: Record<string, Service>; volumes: Record<string, unknown> };
  const s = compose.services;
  expect(s.postgres!.container_name).toBe("shinkei-postgres");
  expect(s.backend!.container_name).toBe("shinkei-backend");
  expect(s.backup!.container_name).toBe("shinkei-backup");
  expect(s.postgres!.image).toMatch(/^postgres:/);
  expect(s.postgres!.healthcheck!.test.join(" ")).toContain("pg_isready");
  expect(s.postgres!.volumes).toContain("pgdata:/var/lib/postgresql/data");
  expect(Object.keys(compose.volumes)).toContain("pgdata");
  for (const name of ["backend", "backup"]) expect(s[name]!.depends_on!.postgres!.condition).toBe("service_healthy");
  expect(s.backup!.volumes).toContain("./backups:/backups");
  expect(s.minio!.profiles).toEqual(["minio"]);
});

test("compose.yaml runs only commands the binary accepts", async () => {
  const compose = Bun.YAML.parse(await Bun.file(join(root, "compose.yaml")).text()) as { services: Record<string, Service> };
  const ours = Object.values(compose.services).filter((svc) => svc.image === "shinkei:local");
  expect(ours.length).toBe(2);
  for (const svc of ours) {
    const r = await shinkei([...svc.command!, "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toStartWith(`Usage: shinkei ${svc.command![0]}`);
    const check = svc.healthcheck?.test.slice(1) ?? [];
    if (check[0] === "shinkei") expect((await shinkei([...check.slice(1), "--help"])).code).toBe(0);
  }
});

test("the Dockerfile builds the binary the way bun run build does and installs matching client tools", async () => {
  const docker = await Bun.file(join(root, "Dockerfile")).text();
  const pkg = await Bun.file(join(root, "package.json")).json();
  expect(pkg.scripts.build).toContain("bun build --compile --minify --bytecode --format=esm cli/main.ts");
  expect(docker).toContain("bun build --compile --minify --bytecode --format=esm cli/main.ts");
  expect(docker).toContain('postgresql-client-${PG_MAJOR}');
  expect(docker).toContain('"postgresql-${PG_MAJOR}"');
  const compose = await Bun.file(join(root, "compose.yaml")).text();
  expect(compose).toContain("image: postgres:${PG_MAJOR:-17}");
  expect(compose).toContain("PG_MAJOR: ${PG_MAJOR:-17}");
  expect(docker).toContain("ARG PG_MAJOR=17");
});

test("compose.yaml: postgres allows replication from the backup service with a bounded slot, which streams WAL", async () => {
  const compose = Bun.YAML.parse(await Bun.file(join(root, "compose.yaml")).text()) as { services: Record<string, Service & { environment?: Record<string, string> }> };
  const pg = compose.services.postgres!;
  expect(pg.command!.join(" ")).toContain("max_slot_wal_keep_size=${MAX_SLOT_WAL_KEEP_SIZE:-10GB}");
  const mount = pg.volumes!.find((v) => v.includes("/docker-entrypoint-initdb.d/"))!;
  expect(compose.services.backup!.environment!.WAL_ARCHIVE).toBe("${WAL_ARCHIVE:-stream}");
  // The init script, run as the image runs it: a replication line, added once.
  const script = join(root, mount.split(":")[0]!);
  const pgdata = await tempDir("hba");
  await Bun.write(join(pgdata, "pg_hba.conf"), "local all all trust\nhost all all all scram-sha-256\n");
  for (let i = 0; i < 2; i++) expect(Bun.spawnSync(["sh", script], { env: { PATH: process.env.PATH!, PGDATA: pgdata } }).exitCode).toBe(0);
  const hba = await Bun.file(join(pgdata, "pg_hba.conf")).text();
  expect(hba.match(/^host replication all all scram-sha-256$/gm)?.length).toBe(1);
  expect(Bun.spawnSync(["sh", script], { env: { PATH: process.env.PATH! } }).exitCode).not.toBe(0);
});
