import type { Subcommand } from "../command.ts";
import { json, line, warn } from "../output.ts";
import { walStore } from "../../src/wal/offsite.ts";
import { signArchive } from "../../src/wal/sign.ts";

/** `pitr sign`: sign the records of an archive written before BACKUP_MANIFEST_KEY was set. */
export const sign: Subcommand = {
  word: "sign",
  summary: "sign the records of an archive written before the key was set",
  description: `Signs the records of an archive written before BACKUP_MANIFEST_KEY was set, each after its
file matched its SHA-256: run it once, for an archive you know is yours.`,
  options: { json: { type: "boolean", description: "machine-readable output" } },
  needsDatabase: false,
  async run(ctx) {
    const { io, config } = ctx;
    const r = await signArchive(config, walStore(config));
    if (ctx.flag("json")) return (json(io, r), r.refused.length ? 1 : 0);
    line(io, `signed ${r.signed.length} record(s)`);
    for (const u of r.refused) warn(io, u.problem);
    return r.refused.length ? 1 : 0;
  },
};
