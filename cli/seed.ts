import type { Command } from "./command.ts";
import { line } from "./output.ts";
import { seedDemo, demoUsers } from "../src/migrations/seed.ts";
import { refuseProduction } from "../src/guarded/guard.ts";

export const seedCommand: Command = {
  name: "seed",
  summary: "load the demo data into an empty database (refuses one that has users)",
  help: `Usage: shinkei seed [--allow-production]

Loads demo users (${demoUsers.map((u) => u.email).join(", ")}; passwords in the README),
their worlds, stories and story beats, in one transaction. Refuses a database that already has
users, and production unless --allow-production.

Options:
  --allow-production   seed even when SHINKEI_ENV/NODE_ENV is production
  -h, --help           show this help`,
  options: { "allow-production": { type: "boolean" } },
  async run(ctx) {
    refuseProduction(ctx.config.environment, ctx.flag("allow-production"), "load demo data");
    await ctx.db.begin((tx) => seedDemo(tx, ctx.config.hashing));
    line(ctx.io, `seeded ${demoUsers.length} demo users with their worlds, stories and beats`);
    return 0;
  },
};
