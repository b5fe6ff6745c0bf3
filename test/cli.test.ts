import { expect, test } from "bun:test";
import { shinkei, takeBackup } from "./support/cli.ts";
import { freePort } from "./support/ops.ts";
import { freshDatabase, snapshot } from "./support/db.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";
import { loadConfig } from "../src/config/index.ts";
import { migrate } from "../src/migrations/migrate.ts";

test("--help lists the commands; --version prints the version", async () => {
  const help = await shinkei(["--help"]);
  expect(help).toSucceed();
  expect(help.stdout).toContain("Usage: shinkei <command>");
  expect(help.stdout).toMatch(/^\s+status\s+show the database/m);
  const version = await shinkei(["--version"]);
  expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  const sub = await shinkei(["status", "--help"]);
  expect(sub).toSucceed();
  expect(sub.stdout).toContain("Usage: shinkei status [--json]");
});

test("unknown command, flag or argument: an error plus usage, exit 2", async () => {
  for (const args of [["frobnicate"], ["status", "--nope"], ["migrate", "sideways"]]) {
    const r = await shinkei(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^✖ (unknown command|Unknown option|unknown argument)/);
    expect(r.stderr).toContain("Usage: shinkei");
    expect(r.stderr).not.toContain("    at ");
  }
});

test("a bad DATABASE_URL: one clear line naming it, exit 2, no stack trace", async () => {
  const r = await shinkei(["status"], { DATABASE_URL: "mysql://nope" });
  expect(r.code).toBe(2);
  expect(r.stderr.split("\n")[0]).toBe(
    "✖ DATABASE_URL must be a URL such as postgres://user:password@host:5432/database",
  );
  expect(r.stderr).not.toContain("    at ");
});

test("a DATABASE_URL naming another database or user in its query is refused before anything runs", async () => {
  for (const query of ["database=other", "user=other", "sslmode=disable&%75ser=other"])
    expect(() => loadConfig({ DATABASE_URL: `postgres://postgres@127.0.0.1:5432/shinkei?${query}` })).toThrow(
      "DATABASE_URL must name the database in its path and the user before the host, not as ?database= or ?user=",
    );
  expect(() => loadConfig({ DRILL_DATABASE_URL: "postgres://postgres@127.0.0.1/postgres?database=live" })).toThrow(
    "DRILL_DATABASE_URL must name the database in its path",
  );
  expect(loadConfig({ DATABASE_URL: "postgres://postgres@h/shinkei?sslmode=require" }).databaseUrl).toContain("ssl");
  // The driver connected to ?database= while the confirmation (and pg_dump) went by the path: a restore
  // confirmed for the named database replaced the other one.
  const live = await freshDatabase("cli_live");
  const named = await freshDatabase("cli_named");
  try {
    await migrate(live.sql);
    await seedSample(live.sql, "live");
    await migrate(named.sql);
    const env = { BACKUP_DIR: await tempDir("cli-url") };
    const file = await takeBackup({ ...env, DATABASE_URL: named.url });
    const before = await snapshot(live.sql);
    const r = await shinkei(
      ["backup", "restore", file, "--yes", "--confirm-database", named.name, "--no-safety-backup", "--allow-superuser"],
      { ...env, DATABASE_URL: `${named.url}?database=${live.name}` },
    );
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n")[0]).toStartWith("✖ DATABASE_URL must name the database in its path");
    expect(await snapshot(live.sql)).toEqual(before);
  } finally {
    await live.drop();
    await named.drop();
  }
});

test("an unreachable server: one line with host and port and how to start it, exit 2", async () => {
  const port = freePort();
  const r = await shinkei(["status"], { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/shinkei` });
  expect(r.code).toBe(2);
  expect(r.stderr.split("\n")[0]).toBe(`✖ cannot reach PostgreSQL at 127.0.0.1:${port} (ECONNREFUSED)`);
  expect(r.stderr).toContain("docker compose up -d postgres");
});

test("config: each bad value names its variable", () => {
  expect(() => loadConfig({ PORT: "eighty" })).toThrow("PORT must be a whole number");
  expect(() => loadConfig({ PORT: "70000" })).toThrow("PORT must be at most 65535");
  expect(() => loadConfig({ SESSION_TTL: "forever" })).toThrow("SESSION_TTL must be a duration");
  expect(() => loadConfig({ COOKIE_SECURE: "maybe" })).toThrow("COOKIE_SECURE must be true or false");
  const c = loadConfig({});
  expect(c.databaseUrl).toBe("postgres://postgres@127.0.0.1:5432/shinkei");
  expect(c.backupDir).toBe("./backups");
  expect(c.sessionTtlMs).toBe(30 * 86_400_000);
});
