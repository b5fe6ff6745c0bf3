import type { Context, Subcommand } from "../command.ts";
import { json, line, warn } from "../output.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { cleanupInstances, listInstances, watch } from "../../src/pitr/instance.ts";

/** `pitr cleanup`: list and remove leftover scratch instances; `--watch PID DIR` is the watchdog. */
async function pitrCleanup(ctx: Context): Promise<number> {
  const watched = ctx.option("watch");
  if (watched !== undefined) {
    const dir = ctx.positionals[1];
    if (!/^\d+$/.test(watched) || !dir)
      throw new ShinkeiError("USAGE", "--watch takes a process id and an instance folder");
    await watch(Number(watched), dir);
    return 0;
  }
  const inUse = (await listInstances()).filter((i) => i.inUse);
  const removed = await cleanupInstances();
  if (ctx.flag("json"))
    return (
      json(ctx.io, {
        removed: removed.map((r) => ({
          root: r.root,
          port: r.port,
          running: r.running,
          createdAt: r.createdAt,
          target: r.target ?? null,
        })),
        inUse: inUse.map((i) => i.root),
      }),
      0
    );
  for (const r of removed)
    line(
      ctx.io,
      `removed    ${r.root}  port ${r.port}  ${r.running ? "was running" : "not running"}  ` +
        `created ${r.createdAt}${r.target ? `  target ${r.target}` : ""}`,
    );
  for (const i of inUse) warn(ctx.io, `left alone ${i.root}: being recovered by process ${i.ownerPid}`);
  if (!removed.length) line(ctx.io, "no leftover point-in-time recovery instances");
  return 0;
}

export const cleanup: Subcommand = {
  word: "cleanup",
  args: { usage: "[DIR]", max: 1 },
  summary: "stop and remove leftover scratch instances",
  description: `Stops and removes leftover scratch instances (every pitr command removes those older than
a day).`,
  options: {
    json: { type: "boolean", description: "machine-readable output" },
    watch: {
      type: "string",
      value: "PID",
      description: "the watchdog a scratch recovery starts: remove DIR when process PID ends",
    },
  },
  needsDatabase: false,
  run: pitrCleanup,
};
