import { readdir } from "node:fs/promises";
import { basename, join } from "node:path";
import { userInfo } from "node:os";
import { writeFileAtomic } from "../backup/files.ts";
import type { Applied } from "./apply.ts";
import type { Plan, Scope } from "./plan.ts";

const SUFFIX = ".recovered.json";

/** What a recovery applied, kept beside its safety backup: the undo is that file. */
export type RecoveredRecord = {
  recovered: true;
  at: string;
  by: string;
  database: string;
  source: string;
  scope: Scope;
  owner?: string;
  mode: "default" | "into-current-account" | "restore-account";
  revertChanged: boolean;
  safetyBackup: string;
  removedAccount?: string;
  tables: Applied["tables"];
};

/** Who ran it: the login behind sudo when there is one, else the account the process runs as. */
function operator(env: Record<string, string | undefined>): string {
  const named = env.SUDO_USER || env.USER || env.LOGNAME;
  if (named) return named;
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? "?"}`; // no passwd entry (some containers): the uid still says who
  }
}

export function recordFor(options: { plan: Plan; applied: Applied; source: string; database: string; safetyBackup: string; revertChanged: boolean; env: Record<string, string | undefined> }): RecoveredRecord {
  const by = operator(options.env);
  return {
    recovered: true,
    at: new Date().toISOString(),
    by,
    database: options.database,
    source: options.source,
    scope: options.plan.scope,
    owner: options.plan.owner,
    mode: options.plan.mode ?? "default",
    revertChanged: options.revertChanged,
    safetyBackup: basename(options.safetyBackup),
    removedAccount: options.applied.removedAccount,
    tables: options.applied.tables,
  };
}

export async function writeRecord(safetyBackupPath: string, record: RecoveredRecord): Promise<string> {
  const path = safetyBackupPath + SUFFIX;
  await writeFileAtomic(path, JSON.stringify(record, null, 2) + "\n");
  return path;
}

/** Every recovery recorded in `dir`, oldest first; unreadable files are skipped, not fatal. */
export async function history(dir: string): Promise<RecoveredRecord[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: RecoveredRecord[] = [];
  for (const name of names.filter((n) => n.endsWith(SUFFIX))) {
    const r = (await Bun.file(join(dir, name)).json().catch(() => null)) as RecoveredRecord | null;
    if (r?.recovered === true && typeof r.at === "string" && r.tables && typeof r.tables === "object") out.push(r);
  }
  return out.sort((a, b) => a.at.localeCompare(b.at));
}
