import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { InstanceState } from "../../src/pitr/instance.ts";

/**
 * A pitr instance folder as one left behind would be: `folder/data`, and an instance.json that
 * describes `folder` unless `state` says otherwise (a state naming another place, say). Written
 * here, not with writeState, which writes into the folder its state names. Returns `folder`.
 */
export async function fakeInstance(folder: string, state: Partial<InstanceState> = {}, mode?: number): Promise<string> {
  await mkdir(join(folder, "data"), { recursive: true, mode });
  const full: InstanceState = {
    pitrInstanceVersion: 1,
    root: folder,
    dataDir: join(folder, "data"),
    socketDir: join(folder, "sockets"),
    bin: "/nonexistent",
    port: 1,
    ownerPid: 999_999_999,
    createdAt: new Date().toISOString(),
    keep: true,
    ...state,
  };
  await Bun.write(join(folder, "instance.json"), JSON.stringify(full));
  return folder;
}
