import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmod, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { binaryPath, buildBinary } from "./support/cli.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";
import { configVariables } from "../src/config.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { libpqEnv } from "../src/backup/pgtools.ts";

const readme = await Bun.file(join(import.meta.dir, "..", "README.md")).text();

/** Commands in the README's shell blocks that cannot run here, and why. */
const notRunnableHere: Record<string, string> = {
  "docker exec shinkei-backup shinkei backup --list": "needs a Docker engine, which this machine has not; the same command runs below without docker",
};

function shellCommands(): string[] {
  const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  return blocks.flatMap((b) => b.split("\n")).map((l) => l.replace(/\s+#.*$/, "").trim()).filter((l) => /(^|\s)shinkei\s/.test(l));
}

let db: TestDatabase;
let cwd: string;
beforeAll(async () => {
  db = await freshDatabase("readme");
  await migrate(db.sql);
  await seedSample(db.sql, "readme");
  await buildBinary();
  cwd = await tempDir("readme");
  await chmod(cwd, 0o755);
  // The README restores an old script's file by name: make one with stock pg_dump.
  await mkdir(join(cwd, "backups"));
  const p = Bun.spawn(["pg_dump", "-f", join(cwd, "backups", "shinkei_backup_20251121_090000.sql")], { env: { ...process.env, ...libpqEnv(db.url) } });
  expect(await p.exited).toBe(0);
});
afterAll(() => db.drop());

test("every environment variable shinkei reads is documented with its default", () => {
  for (const name of [...configVariables, "SHINKEI_DEBUG", "TEST_DATABASE_URL"]) expect(readme).toContain(`\`${name}\``);
});

test("every shinkei command in the README's shell blocks runs as written (or says why it cannot here)", async () => {
  const commands = shellCommands();
  expect(commands.length).toBeGreaterThan(5);
  for (const command of commands) {
    if (notRunnableHere[command]) continue;
    // The README names the default database; here the command runs against this file's own.
    const args = command.replace(/--confirm-database shinkei\b/, `--confirm-database ${db.name}`).split(/\s+/);
    expect(args[0]).toBe("shinkei");
    const p = Bun.spawn([binaryPath, ...args.slice(1)], { cwd, env: { PATH: process.env.PATH!, DATABASE_URL: db.url, NO_COLOR: "1" }, stdout: "pipe", stderr: "pipe" });
    const [stderr, code] = await Promise.all([new Response(p.stderr).text(), p.exited]);
    if (code !== 0) throw new Error(`README command failed (${code}): ${command}\n${stderr}`);
  }
});

test("the commands table names every command, and --help names every command in the table", async () => {
  const help = new Response(Bun.spawn([binaryPath, "--help"], { stdout: "pipe" }).stdout);
  const names = [...(await help.text()).matchAll(/^  ([a-z-]+)\s{2,}/gm)].map((m) => m[1]!);
  for (const name of names) expect(readme).toContain(`\`shinkei ${name}`);
});
