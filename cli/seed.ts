import type { Command } from "./command.ts";
import { line } from "./output.ts";
import { seedDemo, demoUsers } from "../src/migrations/seed.ts";
import { refuseProduction } from "../src/guarded/guard.ts";

export const seedCommand: Command = {
  name: "seed",
  description: `Loads demo users (${demoUsers.map((u) => u.email).join(", ")}; passwords in the README),
their worlds, stories and story beats, in one transaction. Refuses a database that already has
users, and production unless --allow-production.`,
  subcommands: [
    {
      default: true,
      summary: "load the demo data into an empty database (refuses one that has users)",
      options: {
        "allow-production": { type: "boolean", description: "seed even when SHINKEI_ENV/NODE_ENV is production" },
      },
      async run(ctx) {
        refuseProduction(ctx.config.environment, ctx.flag("allow-production"), "load demo data");
        await ctx.db.begin((tx) => seedDemo(tx, ctx.config.hashing));
        line(ctx.io, `seeded ${demoUsers.length} demo users with their worlds, stories and beats`);
        return 0;
      },
    },
  ],
};
