import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmod, mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { TestDatabase } from "./support/db.ts";
import { shinkei } from "./support/cli.ts";
import { seededDatabase, stockDump } from "./support/backup.ts";
import { tempDir } from "./support/fixtures.ts";
import { configVariables } from "../src/config/index.ts";

const readme = await Bun.file(join(import.meta.dir, "..", "README.md")).text();

/** Commands in the README's shell blocks that cannot run here, and why. */
const notRunnableHere: Record<string, string> = {
  "shinkei backup base":
    "needs a replication connection, which the shared test server refuses; test/pitr.test.ts runs it on a " +
    "cluster of its own",
};

function shellCommands(): string[] {
  const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  return blocks
    .flatMap((b) => b.split("\n"))
    .map((l) => l.replace(/\s+#.*$/, "").trim())
    .filter((l) => /(^|\s)shinkei\s/.test(l));
}

let db: TestDatabase;
let cwd: string;
beforeAll(async () => {
  db = await seededDatabase("readme");
  cwd = await tempDir("readme");
  await chmod(cwd, 0o755);
  // The README restores an old script's file by name: make one with stock pg_dump.
  await mkdir(join(cwd, "backups"));
  await stockDump(db.url, join(cwd, "backups", "shinkei_backup_20251121_090000.sql"));
});
afterAll(() => db.drop());

test("every environment variable shinkei reads is documented with its default", () => {
  for (const name of [...configVariables, "SHINKEI_DEBUG", "TEST_DATABASE_URL"])
    expect(readme).toContain(`\`${name}\``);
});

test("every shinkei command in the README's shell blocks runs as written (or says why it cannot here)", async () => {
  const commands = shellCommands();
  expect(commands.length).toBeGreaterThan(5);
  for (const command of commands) {
    if (notRunnableHere[command]) continue;
    // The README names the default database; here the command runs against this file's own.
    const args = command.replace(/--confirm-database shinkei\b/, `--confirm-database ${db.name}`).split(/\s+/);
    expect(args[0]).toBe("shinkei");
    const r = await shinkei(args.slice(1), { DATABASE_URL: db.url }, { cwd });
    if (r.code !== 0) throw new Error(`README command failed (${r.code}): ${command}\n${r.stderr}`);
  }
});

test("the commands table names every command, and --help names every command in the table", async () => {
  const help = (await shinkei(["--help"])).stdout;
  const names = [...help.matchAll(/^  ([a-z-]+)\s{2,}/gm)].map((m) => m[1]!);
  for (const name of names) expect(readme).toContain(`\`shinkei ${name}`);
});
