import type { ParseArgsConfig } from "node:util";
import type { Io } from "./io.ts";
import { warn } from "./output.ts";
import { loadConfig, type Config } from "../src/config/index.ts";
import { connect, describeTarget, type Sql } from "../src/pg/db.ts";
import { ensureLocalCluster, portOpen, type LocalCluster } from "../src/pg/localdb.ts";

export type Values = Record<string, string | boolean | string[] | undefined>;

export type Command = {
  name: string;
  summary: string;
  /** Full help text, shown by `shinkei NAME --help` and on usage errors. */
  help: string;
  options?: NonNullable<ParseArgsConfig["options"]>;
  /** Words that may follow the command name (`migrate status`); anything else is a usage error. */
  subcommands?: string[];
  /** False for the few forms that never touch a database (keygen): no probing, no local cluster. */
  needsDatabase?: (positionals: string[]) => boolean;
  run(ctx: Context): Promise<number>;
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
    this.io.stderr.write(`nothing answers on ${t.host}:${t.port}: using the project-local PostgreSQL in ${this.local.dataDir} (${describeTarget(this.local.url).port})${this.local.started ? ", started" : ""}\n`);
  }

  async close() {
    await this.cachedDb?.end({ timeout: 5 });
    if (this.local?.started) await this.local.stop();
  }
}
