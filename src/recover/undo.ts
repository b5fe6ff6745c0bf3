import type postgres from "postgres";
import { actAsDatabaseOwner, type Queryable, type Sql } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { plainTable, quoteIdent } from "../pg/tables.ts";
import { withMaintenanceLock } from "../pg/lock.ts";
import { checkedCommit } from "../pg/transaction.ts";
import { conflict, keyPart, requireRecoveries, rowsByKey } from "./apply.ts";
import { keyOf, type Row } from "./diff.ts";
import { ownershipGraph, referencesInto, type TableInfo } from "./graph.ts";
import type { RecoveredRecord, UndoData } from "./record.ts";

export type UndoCounts = Record<string, { deleted: number; putBack: number; reinserted: number }>;

/** The most rows one message names: past that, the count. */
const NAMED = 10;

const ROOTS = new Set(["users", "worlds", "stories"]);

const refused = (message: string) =>
  new ShinkeiError("RECORD_REFUSED", message, {
    hint: "Nothing was changed. Undo only with the record a recovery of this database wrote, as it wrote it.",
  });

const nameRow = (t: { table: string; primaryKey: string[] }, row: Row) =>
  `${t.table} (${t.primaryKey.join(", ")})=(${t.primaryKey.map((c) => String(row[c])).join(", ")})`;

/** The same values, another write, while a later recovery is applied: likely it brought the row back. */
const writtenAgain = (t: { table: string; primaryKey: string[] }, row: Row) =>
  `${nameRow(t, row)} was written again since the recovery, with the same values, and a recovery applied ` +
  "after it is not undone: it may have brought the row back; undo that one first";

/**
 * The database's word on a record: the recovery committed here (its id is in `recoveries`, which
 * only the recovery's own transaction writes), with this very safety copy, and was not undone yet.
 * Locks the row, so two undoes of one record run one after the other and the second is refused.
 */
async function claim(tx: Queryable, record: RecoveredRecord): Promise<void> {
  const [r] = await tx<{ sha: string; undone: string | null }[]>`
    select undo_sha256 as sha, to_char(undone_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') as undone
      from public.recoveries where id = ${record.id!} for update`;
  if (!r)
    throw refused(
      `recovery ${record.id} is not recorded in this database: its record comes from another database, ` +
        "its transaction did not commit, or the database was reset or restored to a state before it since",
    );
  if (r.sha !== record.undo!.sha256)
    throw refused(
      `the safety copy named by the record of recovery ${record.id} is not the one this database recorded for it`,
    );
  if (r.undone)
    throw new ShinkeiError(
      "ALREADY_UNDONE",
      `recovery ${record.id} was undone already (at ${r.undone}): nothing was changed`,
    );
}

/**
 * Put back exactly the rows a recovery changed, in an open transaction: rows it updated get their
 * old version, rows it inserted go (children first), a row it deleted comes back. Every one of them
 * is locked and compared first: a row changed or deleted since, or a row written since under one
 * it inserted, stops the undo, naming them, before anything is written.
 */
export async function applyUndo(tx: postgres.TransactionSql, undo: UndoData): Promise<UndoCounts> {
  await tx.unsafe("set local timezone = 'UTC'");
  if (!ROOTS.has(undo.root))
    throw refused(
      `the safety copy names ${JSON.stringify(undo.root).slice(0, 40)} as its root, which recover never starts from`,
    );
  // The live schema decides which tables and columns there are: the file's names are only looked up in it.
  const graph = await ownershipGraph(tx, undo.root);
  const live = new Map(graph.tables.map((t) => [t.name, t]));
  const tables = undo.tables.map((u) => {
    const t = live.get(u.table);
    if (!t || JSON.stringify(t.primaryKey) !== JSON.stringify(u.primaryKey)) {
      throw refused(
        `the safety copy names table ${JSON.stringify(u.table).slice(0, 64)} with key ` +
          `(${u.primaryKey.join(", ").slice(0, 64)}), which recover does not follow from ${undo.root} in ` +
          `this database`,
      );
    }
    return { u, t };
  });

  // Only a later recovery still applied brings a row back again with the values this one inserted:
  // without one, a row's new version is the table rewritten (ALTER TABLE filling a column, a restore
  // of the database), which changed nothing this undo compares. Then the digests decide, as before.
  // Rows it reverted are compared by digest alone: their kept columns (a password) change legitimately.
  const [later] = await tx<{ found: boolean }[]>`
    select exists (select from public.recoveries l join public.recoveries r on r.id = ${undo.id}
      where l.id <> r.id and l.applied_at >= r.applied_at and l.undone_at is null) as found`;
  const versions = later?.found !== false;
  const problems: string[] = [];
  for (const { u, t } of tables) {
    // A column the recovery wrote that the table has lost: its rows cannot be as the recovery left them.
    const dropped = (u.columns ?? []).filter((c) => !t.columns.includes(c));
    if (dropped.length) {
      problems.push(`table ${u.table} has lost column ${dropped.join(", ")} since the recovery (a migration)`);
      continue;
    }
    const inserted = await rowsByKey(
      tx,
      t,
      u.inserted.map((i) => i.key),
      true,
      u.columns,
    );
    for (const i of u.inserted) {
      const now = inserted.get(keyOf(t, i.key));
      if (!now) problems.push(`${nameRow(u, i.key)} was deleted since the recovery`);
      else if (now.digest !== i.digest) problems.push(`${nameRow(u, i.key)} was changed since the recovery`);
      else if (versions && i.xmin !== undefined && now.xmin !== i.xmin) problems.push(writtenAgain(u, i.key));
    }
    const updated = await rowsByKey(
      tx,
      t,
      u.updated.map((x) => keyPart(t, x.before)),
      true,
      u.columns?.filter((c) => !u.kept?.includes(c)),
    );
    for (const x of u.updated) {
      const now = updated.get(keyOf(t, x.before));
      if (!now) problems.push(`${nameRow(u, x.before)} was deleted since the recovery`);
      else if (now.digest !== x.digest) problems.push(`${nameRow(u, x.before)} was changed since the recovery`);
    }
    const deleted = await rowsByKey(
      tx,
      t,
      u.deleted.map((r) => keyPart(t, r)),
      true,
    );
    for (const r of u.deleted)
      if (deleted.has(keyOf(t, r))) problems.push(`${nameRow(u, r)} (removed by the recovery) exists again`);
  }
  // A row written since that refers to a row the recovery inserted would go with it, be changed
  // with it (ON DELETE SET NULL) or block it: it is not the recovery's to touch. Every foreign key
  // counts, not only those recover follows: the never-restored tables (a recovered account's
  // sessions and events), tables of other schemas, a table's references to itself. A row the
  // recovery inserted goes too, and one it updated gets its old version back first: neither counts.
  const withInserted = tables.filter(({ u }) => u.inserted.length).map(({ u }) => u.table);
  for (const e of await referencesInto(tx, withInserted)) {
    const parent = tables.find(({ u }) => u.table === e.parent)!;
    const child = `${quoteIdent(e.childSchema)}.${quoteIdent(e.child)}`;
    const p = `public.${quoteIdent(e.parent)}`;
    const on = e.childColumns.map((c, i) => `c.${quoteIdent(c)} = p.${quoteIdent(e.parentColumns[i]!)}`).join(" and ");
    const match = parent.t.primaryKey.map((c) => `p.${quoteIdent(c)} = k.${quoteIdent(c)}`).join(" and ");
    const rows = await tx.unsafe<{ r: Row }[]>(
      `select pg_catalog.to_jsonb(c) as r from ${child} c join ${p} p on ${on}
      join pg_catalog.jsonb_populate_recordset(null::${p}, $1::text::jsonb) k on ${match}`,
      [JSON.stringify(parent.u.inserted.map((i) => i.key))],
    );
    const mine = e.childSchema === "public" ? tables.find(({ u }) => u.table === e.child) : undefined;
    const exempt = new Set(
      mine
        ? [...mine.u.inserted.map((i) => i.key), ...mine.u.updated.map((x) => x.before)].map((r) => keyOf(mine.t, r))
        : [],
    );
    for (const { r } of rows) {
      if (mine && exempt.has(keyOf(mine.t, r))) continue;
      const table = e.childSchema === "public" ? e.child : `${e.childSchema}.${e.child}`;
      const key = e.childPrimaryKey.length ? e.childPrimaryKey : e.childColumns;
      problems.push(
        `${nameRow({ table, primaryKey: key }, r)} was written since, under a recovered ${e.parent} row ` +
          `(foreign key ${e.name})`,
      );
    }
  }
  if (problems.length) {
    const shown = problems.slice(0, NAMED);
    throw new ShinkeiError(
      "RECOVER_CONFLICT",
      `${problems.length === 1 ? "1 row" : `${problems.length} rows`} changed since the recovery, nothing ` +
        `was undone: ${shown.join("; ")}${problems.length > NAMED ? `; and ${problems.length - NAMED} more` : ""}`,
      {
        hint:
          "The undo removes or reverts only rows exactly as the recovery left them. Put the named rows back " +
          "as they were (or keep the recovery), then run the undo again.",
        details: { rows: problems },
      },
    );
  }

  const counts: UndoCounts = Object.fromEntries(
    tables.map(({ u }) => [u.table, { deleted: 0, putBack: 0, reinserted: 0 }]),
  );
  const write = async (t: TableInfo, what: string, expected: number, query: string, rows: Row[]) => {
    if (!rows.length) return;
    const r = await tx.unsafe(query, [JSON.stringify(rows)]).catch((e) => {
      throw conflict(e, t, what);
    });
    if (r.count !== expected)
      throw new ShinkeiError(
        "RECOVER_FAILED",
        `${what} ${t.name}: ${r.count} rows, expected ${expected}; nothing was undone`,
      );
  };
  const target = (t: TableInfo) => `public.${quoteIdent(t.name)}`;
  const matchS = (t: TableInfo) =>
    t.primaryKey.map((c) => `${target(t)}.${quoteIdent(c)} = s.${quoteIdent(c)}`).join(" and ");
  // Old versions first: a reverted row may point at a row the recovery inserted.
  for (const { u, t } of tables) {
    if (!u.updated.length) continue;
    const present = t.columns.filter(
      (c) => !t.primaryKey.includes(c) && c in u.updated[0]!.before && !u.kept?.includes(c),
    );
    const set = present.map((c) => `${quoteIdent(c)} = s.${quoteIdent(c)}`).join(", ");
    if (set)
      await write(
        t,
        "putting back the old version of rows of",
        u.updated.length,
        `update ${target(t)} set ${set} from pg_catalog.jsonb_populate_recordset(null::${target(t)}, ` +
          `$1::text::jsonb) s where ${matchS(t)}`,
        u.updated.map((x) => x.before),
      );
    counts[u.table]!.putBack = u.updated.length;
  }
  for (const { u, t } of [...tables].reverse()) {
    await write(
      t,
      "removing the recovered rows of",
      u.inserted.length,
      `delete from ${target(t)} using pg_catalog.jsonb_populate_recordset(null::${target(t)}, $1::text::jsonb) s ` +
        `where ${matchS(t)}`,
      u.inserted.map((i) => i.key),
    );
    counts[u.table]!.deleted = u.inserted.length;
  }
  for (const { u, t } of tables) {
    // The columns the rows were saved with: one added since takes its default.
    const cols = t.columns
      .filter((c) => u.deleted.length && c in u.deleted[0]!)
      .map(quoteIdent)
      .join(", ");
    await write(
      t,
      "bringing back the rows removed from",
      u.deleted.length,
      `insert into ${target(t)} (${cols}) overriding system value select ${cols} from ` +
        `pg_catalog.jsonb_populate_recordset(null::${target(t)}, $1::text::jsonb)`,
      u.deleted,
    );
    counts[u.table]!.reinserted = u.deleted.length;
  }
  return counts;
}

/** What the undo will do, from the safety copy alone. */
export function plannedCounts(undo: UndoData): UndoCounts {
  return Object.fromEntries(
    undo.tables.map((u) => [
      u.table,
      { deleted: u.inserted.length, putBack: u.updated.length, reinserted: u.deleted.length },
    ]),
  );
}

/**
 * The undo, run and rolled back: the preview reports rows changed since before anyone is asked to
 * confirm. `sql`: the writer, as for undoRecovery (its triggers run in the trial too).
 */
export async function trialUndo(sql: Sql, record: RecoveredRecord, undo: UndoData): Promise<UndoCounts> {
  await requireRecoveries(sql);
  const rollback = new Error("trial");
  let counts: UndoCounts | undefined;
  await sql
    .begin(async (tx) => {
      await tx.unsafe(actAsDatabaseOwner);
      await claim(tx, record);
      counts = await applyUndo(tx, undo);
      throw rollback;
    })
    .catch((e) => {
      if (e !== rollback) throw e;
    });
  return counts!;
}

/**
 * Under the maintenance lock, in ONE transaction committed only while it is still held: claim the
 * record, put the rows back, mark it undone. Throws only with nothing changed, or COMMIT_UNKNOWN.
 */
export async function undoRecovery(options: {
  sql: Sql;
  /** Where the rows are written (withLoadRole), as for recover: `sql` when not given. */
  writer?: Sql;
  record: RecoveredRecord;
  undo: UndoData;
  wait?: boolean;
}): Promise<{ counts: UndoCounts; applyMs: number }> {
  const { sql, record, undo } = options;
  await requireRecoveries(sql);
  return withMaintenanceLock(
    sql,
    "recover",
    async (lock) => {
      const started = performance.now();
      // Committed only while the lock is held; an error from here is COMMIT_UNKNOWN or nothing undone.
      const counts = await checkedCommit(
        options.writer ?? sql,
        async (tx) => {
          await tx.unsafe(actAsDatabaseOwner);
          await claim(tx, record);
          const counts = await applyUndo(tx, undo);
          await tx`update public.recoveries set undone_at = now() where id = ${record.id!}`;
          return counts;
        },
        { what: "undo", lock },
      );
      return { counts, applyMs: Math.round(performance.now() - started) };
    },
    options.wait,
  );
}

/** Each recorded recovery's state in this database: applied, undone, or never committed here. */
export async function recoveryStates(sql: Sql, ids: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (!ids.length || !(await plainTable(sql, "public.recoveries"))) return out;
  const rows = await sql<{ id: string; undone: string | null }[]>`
    select id::text, pg_catalog.to_char(undone_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') as undone
      from public.recoveries where id::text in ${sql(ids)}`;
  for (const r of rows) out.set(r.id, r.undone ? `undone ${r.undone}` : "applied");
  return out;
}
