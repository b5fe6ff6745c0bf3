import { Context, type Command, type Subcommand } from "./command.ts";
import { commandHelp, parseForm, selectForm, subcommandHelp } from "./parse.ts";
import { processIo, type Io } from "./io.ts";
import { line, reportError } from "./output.ts";
import { ShinkeiError } from "../src/errors.ts";
import { explainDbError } from "../src/pg/db.ts";
import { migrateCommand } from "./migrate/index.ts";
import { statusCommand } from "./status/index.ts";
import { serveCommand } from "./serve.ts";
import { backupCommand } from "./backup/index.ts";
import { resetCommand } from "./reset.ts";
import { seedCommand } from "./seed.ts";
import { backupServiceCommand } from "./backup-service.ts";
import { recoverCommand } from "./recover/index.ts";
import { pitrCommand } from "./pitr/index.ts";
import pkg from "../package.json" with { type: "json" };

export const commands: Command[] = [
  serveCommand,
  statusCommand,
  migrateCommand,
  backupCommand,
  backupServiceCommand,
  pitrCommand,
  recoverCommand,
  resetCommand,
  seedCommand,
];

function usage(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return `shinkei ${pkg.version}: data-safety toolkit for a Postgres-backed app

Usage: shinkei <command> [options]

Commands:
${commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join("\n")}

Options:
  -h, --help     show help (also after a command: shinkei backup --help)
  -v, --version  print the version

Configuration comes from the environment and .env; see the README for every variable.`;
}

/** Parse argv, run one command, and turn whatever it throws into output and an exit code. */
export async function run(argv: string[], io: Io = processIo()): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "-h" || name === "--help" || name === "help") {
    line(io, usage());
    return 0;
  }
  if (name === "-v" || name === "--version") {
    line(io, pkg.version);
    return 0;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) return reportError(io, new ShinkeiError("USAGE", `unknown command "${name}"`), usage());

  let ctx: Context;
  let help = commandHelp(command);
  let needsDatabase = true;
  let form: Subcommand;
  try {
    const selected = selectForm(command, rest);
    if ("help" in selected) {
      line(io, selected.help);
      return 0;
    }
    form = selected.sub;
    if (command.subcommands.length > 1) help = subcommandHelp(command, form);
    const parsed = parseForm(command, form, rest);
    if (parsed.help) {
      line(io, help);
      return 0;
    }
    needsDatabase = form.needsDatabase !== false;
    ctx = new Context(io, parsed.values, parsed.positionals);
  } catch (error) {
    const e =
      error instanceof ShinkeiError
        ? error
        : new ShinkeiError("USAGE", (error as Error).message.split(". To specify")[0]!);
    return reportError(io, e, help);
  }

  try {
    if (needsDatabase) await ctx.resolveDatabase();
    return await form.run(ctx);
  } catch (error) {
    const url = safeUrl(ctx);
    return reportError(io, url ? explainDbError(error, url) : error, help);
  } finally {
    await ctx.close().catch(() => {});
  }
}

function safeUrl(ctx: Context): string | undefined {
  try {
    return ctx.config.databaseUrl;
  } catch {
    return undefined;
  }
}
