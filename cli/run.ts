import { Context, type Command, type Subcommand } from "./command.ts";
import { commandHelp, parseForm, selectForm, subcommandHelp } from "./parse.ts";
import { processIo, type Io } from "./io.ts";
import { line, reportError } from "./output.ts";
import { ShinkeiError } from "../src/errors.ts";
import { explainDbError } from "../src/pg/db.ts";
import pkg from "../package.json" with { type: "json" };

/*
 * The commands, in the order --help lists them. Each one's module loads when that command runs:
 * `backup restore` reads none of pitr's, recover's or the server's code (the binary is built with
 * --splitting, so what is not imported stays unread), and --help reads none of them.
 */
export const commandTable: { name: string; summary: string; load(): Promise<Command> }[] = [
  {
    name: "serve",
    summary: "run the auth server (HOST, PORT; applies migrations unless MIGRATE_ON_START=false)",
    load: () => import("./serve.ts").then((m) => m.serveCommand),
  },
  {
    name: "status",
    summary: "show the database's state: row counts, schema version, size",
    load: () => import("./status/index.ts").then((m) => m.statusCommand),
  },
  {
    name: "migrate",
    summary: "apply pending migrations (creates the database if missing); `status`, `down`",
    load: () => import("./migrate/index.ts").then((m) => m.migrateCommand),
  },
  {
    name: "backup",
    summary: "take, list, verify and restore backups",
    load: () => import("./backup/index.ts").then((m) => m.backupCommand),
  },
  {
    name: "backup-service",
    summary: "run scheduled backups (BACKUP_SCHEDULE, default daily 02:00 UTC) with retention and off-site copies",
    load: () => import("./backup-service.ts").then((m) => m.backupServiceCommand),
  },
  {
    name: "pitr",
    summary: "point-in-time recovery: restore to a moment, the recoverable window, WAL gaps, receiver lag and slot",
    load: () => import("./pitr/index.ts").then((m) => m.pitrCommand),
  },
  {
    name: "recover",
    summary: "bring back one user's (or world's, or story's) rows from a backup, leaving everyone else's as they are",
    load: () => import("./recover/index.ts").then((m) => m.recoverCommand),
  },
  {
    name: "reset",
    summary: "delete everything and reseed, behind three typed confirmations and a backup",
    load: () => import("./reset.ts").then((m) => m.resetCommand),
  },
  {
    name: "seed",
    summary: "load the demo data into an empty database (refuses one that has users)",
    load: () => import("./seed.ts").then((m) => m.seedCommand),
  },
];

/** The command called `name`, or undefined: no such command. */
export function loadCommand(name: string): Promise<Command | undefined> {
  return commandTable.find((c) => c.name === name)?.load() ?? Promise.resolve(undefined);
}

/** Every command, in the order --help lists them. */
export function loadCommands(): Promise<Command[]> {
  return Promise.all(commandTable.map((c) => c.load()));
}

function usage(): string {
  const width = Math.max(...commandTable.map((c) => c.name.length));
  return `shinkei ${pkg.version}: data-safety toolkit for a Postgres-backed app

Usage: shinkei <command> [options]

Commands:
${commandTable.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join("\n")}

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
  const command = await loadCommand(name);
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
