import { expect, test } from "bun:test";
import { shinkei } from "./support/cli.ts";
import { freePort } from "./support/ops.ts";
import { loadConfig } from "../src/config/index.ts";

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
