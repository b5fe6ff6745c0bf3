import type postgres from "postgres";
import { actAsDatabaseOwner, PG, type Queryable, type Sql } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { plainTable, quoteIdent, quoteLiteral } from "../pg/tables.ts";
import type { BackupResult } from "../backup/dump.ts";
import { takeSafetyBackup } from "../guarded/safety.ts";
import { withMaintenanceLock } from "../pg/lock.ts";
import { checkedCommit } from "../pg/transaction.ts";
import type { AgeConfig } from "../storage/crypt.ts";
import { diffScope, digestRows, keptColumns, keyOf, readScope, type Row } from "./diff.ts";
import type { TableInfo } from "./graph.ts";
import type { Plan } from "./plan.ts";
import type { UndoData, UndoTable } from "./record.ts";

export type TableCounts = { restored: number; reverted: number; changedKept: number; createdSinceKept: number };
export type Applied = { tables: Record<string, TableCounts>; removedAccount?: string };
/** The rows the apply changed, as the safety copy keeps them (without the recovery's id yet). */
export type Touched = Omit<UndoData, "id" | "database" | "undoVersion">;

const cols = (names: string[]) => names.map(quoteIdent).join(", ");

/** Turn a constraint violation into the rows it names; anything else passes through. */
export function conflict(error: unknown, t: TableInfo, what: string): unknown {
  const e = error as {
    severity?: string;
    code?: string;
    detail?: string;
    message?: string;
    constraint_name?: string;
    table_name?: string;
  };
  // A server error (it has a severity; class names do not survive minification), class 23: integrity.
  if (typeof e?.severity !== "string" || !e.code?.startsWith("23")) return error;
  return new ShinkeiError(
    "RECOVER_CONFLICT",
    `conflict while ${what} ${t.name}: ${e.detail ?? e.message}${e.constraint_name ? ` (${e.constraint_name})` : ""}`,
    {
      hint:
        "Nothing was applied. Resolve the named rows in the live database (or recover a narrower scope), " +
        "then run recover again.",
      details: { table: e.table_name ?? t.name, constraint: e.constraint_name, detail: e.detail },
      cause: error,
    },
  );
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
async function writeRows(
  tx: postgres.TransactionSql,
  t: TableInfo,
  rows: Row[],
  what: string,
  conflicts: ShinkeiError[],
  write: (q: Queryable, rows: Row[]) => Promise<unknown>,
) {
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
  const message =
    conflicts.length === 1 ? shown[0]! : `${count} conflicts: ${shown.join("; ")}${more ? `; and ${more} more` : ""}`;
  return new ShinkeiError("RECOVER_CONFLICT", message, {
    hint: conflicts[0]!.hint,
    details: { conflicts: conflicts.map((c) => c.details) },
  });
}

/**
 * The rows matching `keys` (objects holding at least the primary key), as they are now, with a digest
 * of each. With `columns`, the digest is of those columns alone: a column a migration adds later
 * does not make a row read as changed (jsonb's text form orders keys, so it is the whole row's
 * digest while the columns are the same). Without, of the whole row (records written before).
 */
export async function rowsByKey(
  q: Queryable,
  t: TableInfo,
  keys: Row[],
  lock: boolean,
  columns?: string[],
): Promise<Map<string, { row: Row; digest: string; xmin: string }>> {
  const out = new Map<string, { row: Row; digest: string; xmin: string }>();
  if (!keys.length) return out;
  const target = `public.${quoteIdent(t.name)}`;
  const match = t.primaryKey.map((c) => `t.${quoteIdent(c)} = k.${quoteIdent(c)}`).join(" and ");
  const digested = columns
    ? "(select pg_catalog.jsonb_object_agg(e.key, e.value) from pg_catalog.jsonb_each(pg_catalog.to_jsonb(t)) e " +
      "where e.key = any($2::text[]))"
    : "pg_catalog.to_jsonb(t)";
  const rows = await q.unsafe<{ r: Row; d: string; x: string }[]>(
    `select pg_catalog.to_jsonb(t) as r, pg_catalog.md5(${digested}::text) as d, t.xmin::pg_catalog.text as x
    from ${target} t join pg_catalog.jsonb_populate_recordset(null::${target}, $1::text::jsonb) k
      on ${match}${lock ? " for update of t" : ""}`,
    columns ? [JSON.stringify(keys), columns] : [JSON.stringify(keys)],
  );
  for (const x of rows) out.set(keyOf(t, x.r), { row: x.r, digest: x.d, xmin: x.x });
  return out;
}

export const keyPart = (t: { primaryKey: string[] }, row: Row): Row =>
  Object.fromEntries(t.primaryKey.map((c) => [c, row[c]]));

/**
 * Write the plan into an open transaction: parents before children (the graph's order), missing
 * rows inserted as they were, changed rows reverted only when asked. Re-reads the live rows first,
 * so what is applied is what is true inside this transaction. Then reads everything back and checks
 * it: counts and a digest of the restored rows must equal the backup's, or the transaction fails.
 */
export async function applyRows(
  tx: postgres.TransactionSql,
  plan: Plan,
  revertChanged: boolean,
): Promise<Applied & { touched: Touched }> {
  if (plan.replaced && !plan.mode)
    throw new ShinkeiError(
      "ACCOUNT_CHOICE_REQUIRED",
      "the email now belongs to another account: choose --into-current-account or --restore-account",
    );
  const root = (id: string) => (a: string) => `${a}.id = ${quoteLiteral(id)}`;
  // One text form of every timestamp, for the digests the undo compares against.
  await tx.unsafe("set local timezone = 'UTC'");
  const touched: Touched = {
    root: plan.graph.root,
    tables: plan.graph.tables.map(
      (t): UndoTable => ({ table: t.name, primaryKey: t.primaryKey, inserted: [], updated: [], deleted: [] }),
    ),
  };
  const undoOf = (name: string) => touched.tables.find((u) => u.table === name)!;
  if (plan.removeAccount) {
    const users = { name: "users", primaryKey: ["id"], columns: [] };
    const gone = await rowsByKey(tx, users, [{ id: plan.removeAccount }], true);
    // The plan found it empty, maybe long ago (a prompt, a queue behind the lock): its history of
    // resets and verifications, written since, would go with it by cascade, beyond any undo.
    const [events] = await tx.unsafe<{ n: number }[]>(
      "select pg_catalog.count(*)::int4 as n from public.account_events where user_id = $1::text::uuid",
      [plan.removeAccount],
    );
    if ((events?.n ?? 0) > 0)
      throw new ShinkeiError(
        "ACCOUNT_NOT_EMPTY",
        `the current account ${plan.owner} (${plan.removeAccount}) owns data since the preview ` +
          `(account_events ${events!.n}): --restore-account removes only an empty account; nothing was applied`,
        { hint: "Use --into-current-account to move the recovered worlds to the current account instead." },
      );
    // --restore-account exists only for a user's scope: users is the graph's root.
    undoOf("users").deleted.push(...[...gone.values()].map((g) => g.row));
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
      q.unsafe(
        `insert into ${target} (${cols(t.columns)}) overriding system value
        select ${cols(t.columns)} from pg_catalog.jsonb_populate_recordset(null::${target}, $1::text::jsonb)`,
        [JSON.stringify(rows)],
      ),
    );
    if (revertChanged) {
      const set = t.columns
        .filter((c) => !t.primaryKey.includes(c))
        .map((c) => `${quoteIdent(c)} = s.${quoteIdent(c)}`)
        .join(", ");
      const match = t.primaryKey.map((c) => `${target}.${quoteIdent(c)} = s.${quoteIdent(c)}`).join(" and ");
      // Locked and read before the update: the row as it was is what the undo puts back.
      const before = await rowsByKey(
        tx,
        t,
        d.changed.map((c) => keyPart(t, c.source)),
        true,
      );
      undoOf(t.name).updated = [...before.values()].map((b) => ({ before: b.row, digest: "" }));
      // What is kept as it is, as it is now that the row is locked: the scope was read without a lock,
      // and a password changed since must not be written over with the one read before.
      const kept = keptColumns(t);
      for (const c of d.changed) {
        const locked = before.get(keyOf(t, c.source));
        for (const k of kept) if (locked) c.source[k] = locked.row[k];
      }
      await writeRows(
        tx,
        t,
        d.changed.map((c) => c.source),
        "reverting changed rows of",
        conflicts,
        (q, rows) =>
          q.unsafe(
            `update ${target} set ${set} from pg_catalog.jsonb_populate_recordset(null::${target}, $1::text::jsonb) ` +
              `s where ${match}`,
            [JSON.stringify(rows)],
          ),
      );
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
  // What each written row is now: an undo removes or reverts it only while it still is.
  for (const t of plan.graph.tables) {
    const d = diffs.find((x) => x.table === t.name)!;
    const u = undoOf(t.name);
    // The digests are of the columns the table has now: the undo compares those alone.
    u.columns = t.columns;
    const inserted = await rowsByKey(
      tx,
      t,
      d.missing.map((r) => keyPart(t, r)),
      false,
      u.columns,
    );
    u.inserted = d.missing.map((r) => {
      const now = inserted.get(keyOf(t, r))!;
      return { key: keyPart(t, r), digest: now.digest, xmin: now.xmin };
    });
    // What a revert keeps as it is, it never wrote: not compared, nor put back, by the undo.
    const kept = u.updated.length ? keptColumns(t) : [];
    if (kept.length) u.kept = kept;
    const updated = await rowsByKey(
      tx,
      t,
      u.updated.map((x) => keyPart(t, x.before)),
      false,
      u.columns.filter((c) => !kept.includes(c)),
    );
    for (const x of u.updated) ({ digest: x.digest, xmin: x.xmin } = updated.get(keyOf(t, x.before))!);
  }
  return { ...result, touched };
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
    if (now.length !== expectedCount)
      problems.push(`${t.name}: ${now.length} rows in scope after the apply, expected ${expectedCount}`);
    if (digestRows(t, got) !== digestRows(t, wanted))
      problems.push(`${t.name}: the restored rows differ from the backup's`);
  }
  if (problems.length)
    throw new ShinkeiError(
      "RECOVER_FAILED",
      `the check after the apply failed, nothing was applied: ${problems.join("; ")}`,
    );
}

export type RecoverRun<T> = { safety?: BackupResult; applied: Applied; saved: T; applyMs: number; safetyMs: number };

/** Refuse before anything is written when the live schema lacks the table that records recoveries. */
export async function requireRecoveries(sql: Queryable): Promise<void> {
  if (!(await plainTable(sql, "public.recoveries")))
    throw new ShinkeiError(
      "MIGRATION_PENDING",
      "the live database has no recoveries table (migration 6): recover records every recovery there",
      { hint: "Run shinkei migrate first. Nothing was changed." },
    );
}

/**
 * Under the maintenance lock: the apply in ONE transaction, and before its commit the safety copy
 * of exactly the rows it changed (`save` writes it, fsynced, and returns its id and digest, which
 * the same transaction stores in `recoveries`). A full pre-recover backup only when asked.
 * Any conflict, failed check or failed write rolls the whole recovery back, and so does a lock lost
 * before the commit. It throws only with nothing applied, or COMMIT_UNKNOWN (checkedCommit): a
 * COMMIT whose answer was lost and whose outcome PostgreSQL could not tell.
 */
export async function recover<T extends { id: string; sha256: string }>(options: {
  sql: Sql;
  /**
   * Where the rows are written (withLoadRole): the live tables' triggers and defaults are the
   * app's code, and run with this pool's rights, not DATABASE_URL's. `sql` when not given.
   */
  writer?: Sql;
  url: string;
  dir: string;
  plan: Plan;
  revertChanged: boolean;
  age?: AgeConfig;
  wait?: boolean;
  fullSafetyBackup?: boolean;
  save: (applied: Applied, touched: Touched, safety?: BackupResult) => Promise<T>;
  onStep?: (s: "safety-backup" | "apply") => void;
}): Promise<RecoverRun<T>> {
  const { sql, plan } = options;
  await requireRecoveries(sql);
  return withMaintenanceLock(
    sql,
    "recover",
    async (lock) => {
      let safety: BackupResult | undefined;
      const safetyStarted = performance.now();
      if (options.fullSafetyBackup) {
        options.onStep?.("safety-backup");
        safety = await takeSafetyBackup({
          sql,
          url: options.url,
          dir: options.dir,
          reason: "pre-recover",
          age: options.age,
        });
      }
      const safetyMs = Math.round(performance.now() - safetyStarted);
      options.onStep?.("apply");
      const started = performance.now();
      // Committed only while the lock is held; an error from here is COMMIT_UNKNOWN or nothing applied.
      const { applied, saved } = await checkedCommit(
        options.writer ?? sql,
        async (tx) => {
          await tx.unsafe(actAsDatabaseOwner);
          const { touched, ...applied } = await applyRows(tx, plan, options.revertChanged);
          const saved = await options.save(applied, touched, safety);
          await tx`insert into public.recoveries (id, undo_sha256) values (${saved.id}, ${saved.sha256})`;
          return { applied, saved };
        },
        { what: "recovery", lock },
      );
      return { safety, applied, saved, applyMs: Math.round(performance.now() - started), safetyMs };
    },
    options.wait,
  );
}

/**
 * The apply, run and rolled back: the preview reports a conflict before anyone is asked to confirm.
 * `sql`: the writer, as for recover (its triggers run in the trial too).
 */
export async function trialApply(sql: Sql, plan: Plan, revertChanged: boolean): Promise<Applied> {
  const rollback = new Error("trial");
  let applied: Applied | undefined;
  await sql
    .begin(async (tx) => {
      await tx.unsafe(actAsDatabaseOwner);
      applied = await applyRows(tx, plan, revertChanged);
      throw rollback;
    })
    .catch((e) => {
      if (e !== rollback) throw e;
    });
  return applied!;
}
