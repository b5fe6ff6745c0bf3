import type { Io } from "./io.ts";
import { warn } from "./output.ts";
import type { ShinkeiError } from "../src/errors.ts";
import { loadConfig, type Config } from "../src/config/index.ts";
import { connect, describeTarget, type Sql } from "../src/pg/db.ts";
import { ensureLocalCluster, portOpen, type LocalCluster } from "../src/pg/localdb.ts";

export type Values = Record<string, string | boolean | string[] | undefined>;

/** One option of one subcommand: what parses it and what its help line says, in one place. */
export type OptionSpec = {
  type: "boolean" | "string";
  short?: string;
  /** The value's name in help: FILE, N, TIME. */
  value?: string;
  /** Options of one group are the form's alternatives, exactly one of them required (usage shows "(--a X | --b Y)"). */
  oneOf?: string;
  /** Its line in the help (may run over several lines). */
  description: string;
};

export type Options = Record<string, OptionSpec>;

/** One form of a command (`backup list`, `recover --undo RECORD`): its own options, help and run. */
export type Subcommand = {
  /** The word after the command that selects this form (`migrate status`). */
  word?: string;
  /** Or an option of this form that selects it (`backup --list`, `recover --undo RECORD`). */
  flag?: string;
  /** The form used when no word and no selecting option is given (`shinkei backup` takes a backup). */
  default?: boolean;
  /** Arguments after the word, as help shows them ("[F]", "NAME TARGET"); max is how many it takes. */
  args?: { usage: string; max: number };
  summary: string;
  /** What the help says beyond the summary and the options. */
  description?: string;
  options: Options;
  /** False for the forms that never touch a database (keygen): no probing, no local cluster. */
  needsDatabase?: boolean;
  /** A clearer refusal than "Unknown option" for options this form never takes (recover --undo --user). */
  refuse?: (names: string[]) => ShinkeiError | undefined;
  run(ctx: Context): Promise<number>;
};

/** A command's forms; its one-line summary is in cli/run.ts's table, so --help loads no command. */
export type Command = {
  name: string;
  /** What `shinkei NAME --help` says beyond each form's usage, summary and options. */
  description?: string;
  subcommands: Subcommand[];
};

export class Context {
  private cachedConfig?: Config;
  private cachedDb?: Sql;
  private local?: LocalCluster;

  constructor(
    readonly io: Io,
    readonly values: Values,
    readonly positionals: string[],
  ) {}

  get config(): Config {
    if (!this.cachedConfig) {
      this.cachedConfig = loadConfig(this.io.env);
      for (const w of this.cachedConfig.warnings ?? []) warn(this.io, w);
    }
    return this.cachedConfig;
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

  /**
   * With DATABASE_URL unset and nothing on 127.0.0.1:5432, use (starting it if need be) the
   * project-local cluster in ./data/postgres, so a fresh checkout runs with zero setup.
   */
  async resolveDatabase(): Promise<void> {
    const config = this.config;
    if (this.io.env.DATABASE_URL) return;
    const t = describeTarget(config.databaseUrl);
    if (await portOpen(t.host, t.port)) return;
    this.local = await ensureLocalCluster(process.cwd(), this.io.env, config.environment);
    this.cachedConfig = { ...config, databaseUrl: this.local.url };
    this.io.stderr.write(
      `nothing answers on ${t.host}:${t.port}: using the project-local PostgreSQL ` +
        `in ${this.local.dataDir} ` +
        `(${describeTarget(this.local.url).port})${this.local.started ? ", started" : ""}\n`,
    );
  }

  async close() {
    await this.cachedDb?.end({ timeout: 5 });
    if (this.local?.started) await this.local.stop();
  }
}
