import type { Context, Subcommand } from "../command.ts";
import { line, json } from "../output.ts";
import { writeIdentity } from "../../src/storage/crypt.ts";

export async function keygen(ctx: Context): Promise<number> {
  const path = ctx.option("output") ?? "shinkei-backup.key";
  const recipient = await writeIdentity(path);
  if (ctx.flag("json")) return (json(ctx.io, { identityFile: path, recipient }), 0);
  line(ctx.io, `wrote the private key to ${path} (mode 0600): keep it off the backup host`);
  line(ctx.io, `public key: ${recipient}`);
  line(ctx.io, `encrypt backups with:  BACKUP_AGE_RECIPIENTS=${recipient}`);
  line(ctx.io, `restore them with:     BACKUP_AGE_IDENTITY=${path}`);
  return 0;
}

export const keygenForm: Subcommand = {
  word: "keygen",
  summary: `write a new age private key (mode 0600, never overwriting;
default shinkei-backup.key) and print its public key`,
  options: {
    output: { type: "string", value: "FILE", description: "where to write the private key" },
    json: { type: "boolean", description: "machine-readable output" },
  },
  needsDatabase: false,
  run: keygen,
};
