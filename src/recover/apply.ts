import type postgres from "postgres";
import { PG, type Queryable, type Sql } from "../db.ts";
import { ShinkeiError } from "../errors.ts";
import { quoteIdent, quoteLiteral } from "../state.ts";
import type { BackupResult } from "../backup/dump.ts";
import { takeSafetyBackup } from "../backup/safety.ts";
import { withMaintenanceLock } from "../backup/lock.ts";
import type { AgeConfig } from "../backup/crypt.ts";
import { diffScope, digestRows, keyOf, readScope, type Row } from "./diff.ts";
import type { TableInfo } from "./graph.ts";
import type { Plan } from "./plan.ts";

export type TableCounts = { restored: number; reverted: number; changedKept: number; createdSinceKept: number };
export type Applied = { tables: Record<string, TableCounts>; removedAccount?: string };

const cols = (names: string[]) => names.map(quoteIdent).join(", ");

/** Turn a constraint violation into the rows it names; anything else passes through. */
function conflict(error: unknown, t: TableInfo, what: string): unknown {
  const e = error as { severity?: string; code?: string; detail?: string; message?: string; constraint_name?: string; table_name?: string };
  // A server error (it has a severity; class names do not survive minification), class 23: integrity.
  if (typeof e?.severity !== "string" || !e.code?.startsWith("23")) return error;
  return new ShinkeiError("RECOVER_CONFLICT", `conflict while ${what} ${t.name}: ${e.detail ?? e.message}${e.constraint_name ? ` (${e.constraint_name})` : ""}`, {
    hint: "Nothing was applied. Resolve the named rows in the live database (or recover a narrower scope), then run recover again.",
    details: { table: e.table_name ?? t.name, constraint: e.constraint_name, detail: e.detail },
    cause: error,
  });
}

/** The most conflicts one message names: past that, the count (fix these, and run again). */
const NAMED_CONFLICTS = 10;

/** Past this many, the row-by-row search stops: the message says "at least". */
const MAX_CONFLICTS = 100;

/**
 * Write `rows` with `write`, all at once; when that hits a conflict, again one row at a time, each
 * under a savepoint, so every conflicting row is named, not only the first. Conflicts are
 * collected: the caller fails once every table was tried. The savepoint is released after each
 * row (postgres.js's savepoint() never releases, and thousands of nested subtransactions would
 * slow the live primary).
 */
async function writeRows(tx: postgres.TransactionSql, t: TableInfo, rows: Row[], what: string, conflicts: ShinkeiError[], write: (q: Queryable, rows: Row[]) => Promise<unknown>) {
  if (!rows.length || conflicts.length >= MAX_CONFLICTS) return;
  const attempt = async (batch: Row[]) => {
    await tx.unsafe("savepoint shinkei_recover");
    try {
      await write(tx, batch);
    } catch (e) {
      // Back to before the attempt; if even that fails (the connection ended), the first error is the news.
      await tx.unsafe("rollback to savepoint shinkei_recover").catch(() => {
        throw e;
      });
      await tx.unsafe("release savepoint shinkei_recover");
      return conflict(e, t, what);
    }
    await tx.unsafe("release savepoint shinkei_recover");
    return null;
  };
  const all = await attempt(rows);
  if (all === null) return;
  if (!(all instanceof ShinkeiError)) throw all;
  for (const row of rows) {
    if (conflicts.length >= MAX_CONFLICTS) return;
    const e = await attempt([row]);
    if (e instanceof ShinkeiError) conflicts.push(e);
    else if (e !== null) throw e;
  }
}

function conflictsError(all: ShinkeiError[]): ShinkeiError {
  // A row whose parent clashed fails on its foreign key too: name the clashes themselves first.
  const fk = (c: ShinkeiError) => (c.cause as { code?: string } | undefined)?.code === PG.FOREIGN_KEY_VIOLATION;
  const conflicts = all.some((c) => !fk(c)) ? all.filter((c) => !fk(c)) : all;
  const shown = conflicts.slice(0, NAMED_CONFLICTS).map((c) => c.message);
  const more = conflicts.length - shown.length;
  const count = all.length >= MAX_CONFLICTS ? `at least ${conflicts.length}` : String(conflicts.length);
  const message = conflicts.length === 1 ? shown[0]! : `${count} conflicts: ${shown.join("; ")}${more ? `; and ${more} more` : ""}`;
  return new ShinkeiError("RECOVER_CONFLICT", message, {
    hint: conflicts[0]!.hint,
    details: { conflicts: conflicts.map((c) => c.details) },
  });
}

/**
 * Write the plan into an open transaction: parents before children (the graph's order), missing
 * rows inserted as they were, changed rows reverted only when asked. Re-reads the live rows first,
 * so what is applied is what is true inside this transaction. Then reads everything back and checks
 * it: counts and a digest of the restored rows must equal the backup's, or the transaction fails.
 */
export async function applyRows(tx: postgres.TransactionSql, plan: Plan, revertChanged: boolean): Promise<Applied> {
  if (plan.replaced && !plan.mode) throw new ShinkeiError("ACCOUNT_CHOICE_REQUIRED", "the email now belongs to another account: choose --into-current-account or --restore-account");
  const root = (id: string) => (a: string) => `${a}.id = ${quoteLiteral(id)}`;
  if (plan.removeAccount) {
    // Sessions go with it (ON DELETE CASCADE); any row it owns makes this fail and the whole recovery with it.
    await tx.unsafe(`delete from public.users where id = ${quoteLiteral(plan.removeAccount)}`).catch((e) => {
      throw conflict(e, { name: "users", primaryKey: ["id"], columns: [] }, "removing the new, empty account from");
    });
  }
  const diffs = diffScope(plan.graph, plan.source, await readScope(tx, plan.graph, root(plan.currentRoot)));
  const result: Applied = { tables: {}, removedAccount: plan.removeAccount };
  const conflicts: ShinkeiError[] = [];
  for (const t of plan.graph.tables) {
    const d = diffs.find((x) => x.table === t.name)!;
    const target = `public.${quoteIdent(t.name)}`;
    await writeRows(tx, t, d.missing, "restoring missing rows of", conflicts, (q, rows) =>
      q.unsafe(`insert into ${target} (${cols(t.columns)}) overriding system value
        select ${cols(t.columns)} from jsonb_populate_recordset(null::${target}, $1::text::jsonb)`, [JSON.stringify(rows)]));
    if (revertChanged) {
      const set = t.columns.filter((c) => !t.primaryKey.includes(c)).map((c) => `${quoteIdent(c)} = s.${quoteIdent(c)}`).join(", ");
      const match = t.primaryKey.map((c) => `${target}.${quoteIdent(c)} = s.${quoteIdent(c)}`).join(" and ");
      await writeRows(tx, t, d.changed.map((c) => c.source), "reverting changed rows of", conflicts, (q, rows) =>
        q.unsafe(`update ${target} set ${set} from jsonb_populate_recordset(null::${target}, $1::text::jsonb) s where ${match}`, [JSON.stringify(rows)]));
    }
    result.tables[t.name] = {
      restored: d.missing.length,
      reverted: revertChanged ? d.changed.length : 0,
      changedKept: revertChanged ? 0 : d.changed.length,
      createdSinceKept: d.createdSince.length,
    };
  }
  if (conflicts.length) throw conflictsError(conflicts);
  await check(tx, plan, diffs, revertChanged);
  return result;
}

async function check(tx: Queryable, plan: Plan, before: ReturnType<typeof diffScope>, revertChanged: boolean) {
  const after = await readScope(tx, plan.graph, (a) => `${a}.id = ${quoteLiteral(plan.currentRoot)}`);
  const problems: string[] = [];
  for (const t of plan.graph.tables) {
    const b = before.find((x) => x.table === t.name)!;
    const wanted: Row[] = [...b.missing, ...(revertChanged ? b.changed.map((c) => c.source) : [])];
    const keys = new Set(wanted.map((r) => keyOf(t, r)));
    const now = after.get(t.name)!;
    const got = now.filter((r) => keys.has(keyOf(t, r)));
    const expectedCount = b.same + b.missing.length + b.changed.length + b.createdSince.length;
    if (now.length !== expectedCount) problems.push(`${t.name}: ${now.length} rows in scope after the apply, expected ${expectedCount}`);
    if (digestRows(t, got) !== digestRows(t, wanted)) problems.push(`${t.name}: the restored rows differ from the backup's`);
  }
  if (problems.length) throw new ShinkeiError("RECOVER_FAILED", `the check after the apply failed, nothing was applied: ${problems.join("; ")}`);
}

export type RecoverRun = { safety: BackupResult; applied: Applied; applyMs: number };

/**
 * Under the maintenance lock: a verified pre-recover backup, then the apply in ONE transaction.
 * Any conflict or failed check rolls the whole recovery back.
 */
export async function recover(options: { sql: Sql; url: string; dir: string; plan: Plan; revertChanged: boolean; age?: AgeConfig; wait?: boolean; onStep?: (s: "safety-backup" | "apply") => void }): Promise<RecoverRun> {
  const { sql, plan } = options;
  return withMaintenanceLock(sql, "recover", async () => {
    options.onStep?.("safety-backup");
    const safety = await takeSafetyBackup({ sql, url: options.url, dir: options.dir, reason: "pre-recover", age: options.age });
    options.onStep?.("apply");
    const started = performance.now();
    const applied = await sql.begin((tx) => applyRows(tx, plan, options.revertChanged));
    return { safety, applied, applyMs: Math.round(performance.now() - started) };
  }, options.wait);
}

/** The apply, run and rolled back: the preview reports a conflict before anyone is asked to confirm. */
export async function trialApply(sql: Sql, plan: Plan, revertChanged: boolean): Promise<Applied> {
  const rollback = new Error("trial");
  let applied: Applied | undefined;
  await sql.begin(async (tx) => {
    applied = await applyRows(tx, plan, revertChanged);
    throw rollback;
  }).catch((e) => {
    if (e !== rollback) throw e;
  });
  return applied!;
}
