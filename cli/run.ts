import { Context, type Command, type Subcommand } from "./command.ts";
import { commandHelp, parseForm, selectForm, subcommandHelp } from "./parse.ts";
import { processIo, type Io } from "./io.ts";
import { line, reportError } from "./output.ts";
import { ShinkeiError } from "../src/errors.ts";
import { explainDbError } from "../src/pg/db.ts";
import pkg from "../package.json" with { type: "json" };

/*
 * Each command's module, loaded when that command runs: `backup restore` reads none of pitr's,
 * recover's or the server's code (the binary is built with --splitting, so what is not imported
 * stays unread). --help, which lists them all, loads them all. In the order --help lists them.
 */
const commandModules = new Map<string, () => Promise<Command>>([
  ["serve", () => import("./serve.ts").then((m) => m.serveCommand)],
  ["status", () => import("./status/index.ts").then((m) => m.statusCommand)],
  ["migrate", () => import("./migrate/index.ts").then((m) => m.migrateCommand)],
  ["backup", () => import("./backup/index.ts").then((m) => m.backupCommand)],
  ["backup-service", () => import("./backup-service.ts").then((m) => m.backupServiceCommand)],
  ["pitr", () => import("./pitr/index.ts").then((m) => m.pitrCommand)],
  ["recover", () => import("./recover/index.ts").then((m) => m.recoverCommand)],
  ["reset", () => import("./reset.ts").then((m) => m.resetCommand)],
  ["seed", () => import("./seed.ts").then((m) => m.seedCommand)],
]);

/** The command called `name`, or undefined: no such command. */
export function loadCommand(name: string): Promise<Command | undefined> {
  return commandModules.get(name)?.() ?? Promise.resolve(undefined);
}

/** Every command, in the order --help lists them. */
export function loadCommands(): Promise<Command[]> {
  return Promise.all([...commandModules.values()].map((load) => load()));
}

async function usage(): Promise<string> {
  const commands = await loadCommands();
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
    line(io, await usage());
    return 0;
  }
  if (name === "-v" || name === "--version") {
    line(io, pkg.version);
    return 0;
  }
  const command = await loadCommand(name);
  if (!command) return reportError(io, new ShinkeiError("USAGE", `unknown command "${name}"`), await usage());

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
