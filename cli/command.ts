import type { ParseArgsConfig } from "node:util";
import type { Io } from "./io.ts";
import { loadConfig, type Config } from "../src/config.ts";
import { connect, type Sql } from "../src/db.ts";

export type Values = Record<string, string | boolean | string[] | undefined>;

export type Command = {
  name: string;
  summary: string;
  /** Full help text, shown by `shinkei NAME --help` and on usage errors. */
  help: string;
  options?: NonNullable<ParseArgsConfig["options"]>;
  /** Words that may follow the command name (`migrate status`); anything else is a usage error. */
  subcommands?: string[];
  run(ctx: Context): Promise<number>;
};

export class Context {
  private cachedConfig?: Config;
  private cachedDb?: Sql;

  constructor(
    readonly io: Io,
    readonly values: Values,
    readonly positionals: string[],
  ) {}

  get config(): Config {
    return (this.cachedConfig ??= loadConfig(this.io.env));
  }

  /** One pool per command run, closed by the dispatcher when the command ends. */
  get db(): Sql {
    return (this.cachedDb ??= connect(this.config.databaseUrl, { max: 4 }));
  }

  flag(name: string): boolean {
    return this.values[name] === true;
  }

  option(name: string): string | undefined {
    const v = this.values[name];
    return typeof v === "string" ? v : undefined;
  }

  async close() {
    await this.cachedDb?.end({ timeout: 5 });
  }
}
