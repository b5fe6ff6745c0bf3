import { rename, rm } from "node:fs/promises";
import { ShinkeiError } from "../errors.ts";

/*
 * restore_command's side of a scratch recovery (see walserve.ts): a module of its own that imports
 * next to nothing, because the command runs once for every WAL file the server asks the socket for
 * (see cli/main.ts).
 */

/** The restore_command side: ask the recovering shinkei for `name`, write it to `target` whole or not at all. */
export async function fetchViaSocket(socket: string, name: string, target: string): Promise<void> {
  let res: Response;
  try {
    res = await fetch(`http://shinkei/wal/${encodeURIComponent(name)}`, { unix: socket });
  } catch (e) {
    // Not an answer about the archive: abort recovery (exit 126) rather than end it here.
    throw new ShinkeiError(
      "RECOVERY_FAILED",
      `the shinkei process recovering this instance does not answer on ${socket}: ${(e as Error).message}`,
    );
  }
  if (!res.ok) {
    const text = (await res.text()).trim();
    throw new ShinkeiError(
      res.status === 404 ? "NOT_FOUND" : "BACKUP_CORRUPT",
      text || `fetching ${name} failed (${res.status})`,
    );
  }
  // Like cp in restore_command, no fsync: a server that crashes mid-recovery asks for the file again.
  const partial = `${target}.shinkei-fetch`;
  try {
    await Bun.write(partial, await res.arrayBuffer());
    await rename(partial, target);
  } finally {
    await rm(partial, { force: true });
  }
}
