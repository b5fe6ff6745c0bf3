import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmod, copyFile, readdir, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { freshDatabase, snapshot, type TestDatabase } from "./support/db.ts";
import { binaryPath, buildBinary, shinkei } from "./support/cli.ts";
import { Service } from "./support/process.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";

let db: TestDatabase;
let alone: string;

/** A new folder holding a copy of the binary and nothing else. */
async function copiedAlone(): Promise<string> {
  await buildBinary();
  const folder = await tempDir("alone");
  await chmod(folder, 0o755);
  await copyFile(binaryPath, join(folder, "shinkei"));
  return folder;
}

beforeAll(async () => {
  db = await freshDatabase("binary");
  alone = await copiedAlone();
});
afterAll(async () => {
  await db.drop();
  await rm(alone, { recursive: true, force: true });
});

/** The copy alone in its folder, run from there. */
const copy = (folder = alone) => ({ cwd: folder, binary: join(folder, "shinkei") });
const run = (args: string[]) => shinkei(args, { DATABASE_URL: db.url }, copy());

describe("the binary, copied alone into an empty folder", () => {
  test("migrate, status, backup, list, verify, restore and serve work with nothing beside it", async () => {
    expect(await readdir(alone)).toEqual(["shinkei"]);
    expect((await run(["migrate"])).code).toBe(0);
    await seedSample(db.sql, "bin");
    const status = JSON.parse((await run(["status", "--json"])).stdout);
    expect(status.counts.users).toBe(3);
    const before = await snapshot(db.sql);

    const backup = await run(["backup"]);
    expect(backup).toSucceed();
    expect(backup.stdout).toContain("backup    backups/shinkei_backup_");
    const list = JSON.parse((await run(["backup", "list", "--json"])).stdout);
    expect(list).toHaveLength(1);
    expect((await run(["backup", "verify"])).code).toBe(0);
    await db.sql`delete from story_beats`;
    const restored = await run([
      "backup",
      "restore",
      "--allow-superuser",
      list[0].name,
      "--yes",
      "--confirm-database",
      db.name,
    ]);
    expect(restored).toSucceed();
    expect(await snapshot(db.sql)).toEqual(before);

    const serve = await Service.start(["serve"], { DATABASE_URL: db.url, PORT: "0", HOST: "127.0.0.1" }, copy());
    expect((await fetch(`${await serve.listening()}/ready`)).status).toBe(200);
    expect(await serve.stop()).toBe(0);
  });

  test("each command's --help is complete: every command in --help answers its own --help", async () => {
    const help = (await shinkei(["--help"])).stdout;
    const names = [...help.matchAll(/^  ([a-z-]+)\s{2,}/gm)].map((m) => m[1]!);
    expect(names).toEqual([
      "serve",
      "status",
      "migrate",
      "backup",
      "backup-service",
      "pitr",
      "recover",
      "reset",
      "seed",
    ]);
    for (const name of names) {
      const r = await shinkei([name, "--help"]);
      expect(r).toSucceed();
      expect(r.stdout).toStartWith(`Usage: shinkei ${name}`);
    }
  });
});

const netns = Bun.spawnSync(["ip", "netns", "add", "shinkei-probe"]).exitCode === 0;
if (netns) Bun.spawnSync(["ip", "netns", "del", "shinkei-probe"]);

describe("zero-setup local run", () => {
  // A network namespace of our own is the honest way to make 127.0.0.1:5432 unavailable.
  test.skipIf(!netns || process.getuid?.() !== 0)(
    "with DATABASE_URL unset and 5432 unavailable: start, register, stop, start again",
    async () => {
      // A folder of its own: the local cluster this test starts lives there, and must not meet the other tests.
      const home = await copiedAlone();
      const ns = `shinkei-${crypto.randomUUID().slice(0, 6)}`;
      expect(Bun.spawnSync(["ip", "netns", "add", ns]).exitCode).toBe(0);
      Bun.spawnSync(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
      const port = String(20000 + Math.floor(Math.random() * 20000));
      const env = { PORT: port, HOST: "127.0.0.1", COOKIE_SECURE: "false" };
      const inNs = ["ip", "netns", "exec", ns];
      const call = async (path: string, body: unknown) => {
        const p = Bun.spawn(
          [
            ...inNs,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            JSON.stringify(body),
            `http://127.0.0.1:${port}${path}`,
          ],
          { stdout: "pipe" },
        );
        return Number(await new Response(p.stdout).text());
      };
      const start = async () => {
        const serve = await Service.start(["serve"], env, { ...copy(home), prefix: inNs });
        await serve.listening();
        return serve;
      };
      const postgresRunning = () =>
        Bun.spawnSync(["pgrep", "-f", `postgres -D ${join(home, "data", "postgres")}`]).exitCode === 0;
      try {
        // A command that needs no database starts none.
        const keygen = Bun.spawnSync(
          [...inNs, join(home, "shinkei"), "backup", "keygen", "--output", join(home, "k.key")],
          { cwd: home, env: { PATH: process.env.PATH!, TMPDIR: tmpdir(), ...env } },
        );
        expect(keygen.exitCode).toBe(0);
        expect(existsSync(join(home, "data"))).toBe(false);

        let serve = await start();
        expect(
          await call("/api/v1/auth/register", {
            email: "zero@example.com",
            password: "zero setup works",
            name: "Zero",
          }),
        ).toBe(201);
        // The welcome mail goes to the log at once: stopped with it still due, the process lingers
        // for the outbox's grace period (5 s) after it is done, which is not what this test is about.
        await serve.waitFor((l) => l.msg === "mail sent");
        expect(await serve.stop()).toBe(0);
        expect(postgresRunning()).toBe(false);

        serve = await start();
        expect(await call("/api/v1/auth/login", { email: "zero@example.com", password: "zero setup works" })).toBe(200);
        expect(await serve.stop()).toBe(0);
        expect(postgresRunning()).toBe(false);
      } finally {
        Bun.spawnSync(["pkill", "-f", `postgres -D ${join(home, "data", "postgres")}`]);
        Bun.spawnSync(["ip", "netns", "del", ns]);
        await rm(home, { recursive: true, force: true });
      }
    },
  );

  test.skipIf(!netns || process.getuid?.() !== 0)(
    "with SHINKEI_ENV=production and 5432 unavailable: an error, and no local cluster",
    async () => {
      const ns = `shinkei-${crypto.randomUUID().slice(0, 6)}`;
      expect(Bun.spawnSync(["ip", "netns", "add", ns]).exitCode).toBe(0);
      const cwd = await tempDir("prod-no-local");
      await chmod(cwd, 0o755);
      try {
        Bun.spawnSync(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
        const r = Bun.spawnSync(["ip", "netns", "exec", ns, join(alone, "shinkei"), "status"], {
          cwd,
          env: { PATH: process.env.PATH!, TMPDIR: tmpdir(), NO_COLOR: "1", SHINKEI_ENV: "production" },
        });
        expect(r.exitCode).toBe(2);
        expect(r.stderr.toString().split("\n")[0]).toBe(
          "✖ nothing answers on 127.0.0.1:5432, and in production shinkei never starts a database of its own",
        );
        expect(existsSync(join(cwd, "data"))).toBe(false);
      } finally {
        Bun.spawnSync(["pkill", "-f", `postgres -D ${join(cwd, "data", "postgres")}`]);
        Bun.spawnSync(["ip", "netns", "del", ns]);
      }
    },
  );
});
