import type { Io } from "../io.ts";
import { line, table } from "../output.ts";
import { formatDuration } from "../../src/duration.ts";
import { describeGraph } from "../../src/recover/graph.ts";
import type { Account, Plan } from "../../src/recover/plan.ts";
import type { Applied } from "../../src/recover/apply.ts";
import type { RecoveredRecord } from "../../src/recover/record.ts";
import type { UndoCounts } from "../../src/recover/undo.ts";
import type { Row } from "../../src/recover/diff.ts";

/** The preview as data: what --json prints, and what the text view is drawn from. */
export function previewJson(plan: Plan, source: string) {
  return {
    source,
    scope: plan.scope,
    owner: plan.owner ?? null,
    followed: plan.graph.edges.map((e) => ({
      parent: e.parent,
      child: e.child,
      childColumns: e.childColumns,
      parentColumns: e.parentColumns,
    })),
    skipped: plan.graph.skipped,
    replaced: plan.replaced ?? null,
    mode: plan.mode ?? null,
    notes: plan.notes,
    tables: plan.tables.map((d) => ({
      table: d.table,
      counts: {
        missing: d.missing.length,
        changed: d.changed.length,
        createdSince: d.createdSince.length,
        same: d.same,
      },
      missing: d.missing,
      changed: d.changed.map((c) => ({ columns: c.columns, source: c.source, current: c.current })),
      createdSince: d.createdSince,
    })),
  };
}

const short = (v: unknown) => {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
};
const rowText = (r: Row) =>
  Object.entries(r)
    .map(([k, v]) => `${k}=${short(v)}`)
    .join("  ");

export function showAccounts(io: Io, replaced: NonNullable<Plan["replaced"]>) {
  const describe = (label: string, a: Account) =>
    `${label} ${a.id}  ${a.email}  "${a.name}"  created ${a.createdAt}  owns ${
      Object.entries(a.rows)
        .map(([t, n]) => `${t} ${n}`)
        .join(", ") || "nothing"
    }`;
  line(io, `the email ${replaced.old.email} now belongs to a different, newer account:`);
  line(io, `  ${describe("in the backup:", replaced.old)}`);
  line(io, `  ${describe("now:          ", replaced.current)}`);
}

/** `+` comes back, `~` differs (now -> backup; comes back with --revert-changed), `=` created since: kept. */
export function showPreview(io: Io, plan: Plan, source: string, loadMs: number, withRows: boolean) {
  line(io, `source     ${source} (loaded into a scratch database in ${formatDuration(loadMs)})`);
  const scope = plan.scope.kind === "user" ? plan.scope.email : `${plan.scope.kind} ${plan.scope.id}`;
  line(io, `scope      ${scope}${plan.owner && plan.scope.kind !== "user" ? ` (owner ${plan.owner})` : ""}`);
  for (const [i, l] of describeGraph(plan.graph).entries()) line(io, `${i === 0 ? "followed  " : "          "} ${l}`);
  if (plan.replaced) showAccounts(io, plan.replaced);
  if (plan.mode === "into-current-account")
    line(io, `mode       --into-current-account: recovered rows are re-parented to ${plan.currentRoot}`);
  if (plan.mode === "restore-account")
    line(
      io,
      `mode       --restore-account: the new, empty account ${plan.removeAccount} is removed, the old one comes back`,
    );
  for (const n of plan.notes) line(io, `note       ${n}`);
  line(io);
  line(
    io,
    table([
      ["table", "missing now", "changed", "created since", "same"],
      ...plan.tables.map((d) => [d.table, d.missing.length, d.changed.length, d.createdSince.length, d.same]),
    ]),
  );
  if (!withRows) return;
  for (const d of plan.tables) {
    const key = plan.graph.tables.find((t) => t.name === d.table)!.primaryKey;
    for (const r of d.missing) line(io, `+ ${d.table}  ${rowText(r)}`);
    for (const c of d.changed) {
      const keyText = key.map((k) => `${k}=${short(c.source[k])}`).join("  ");
      const changes = c.columns.map((k) => `${k}: ${short(c.current[k])} (now) -> ${short(c.source[k])} (backup)`);
      line(io, `~ ${d.table}  ${keyText}  ${changes.join("  ")}`);
    }
    for (const r of d.createdSince) line(io, `= ${d.table}  ${rowText(r)}  (created since: kept)`);
  }
}

export function showApplied(io: Io, applied: Applied) {
  const list = (pick: (c: Applied["tables"][string]) => number) =>
    Object.entries(applied.tables)
      .filter(([, c]) => pick(c) > 0)
      .map(([t, c]) => `${t} ${pick(c)}`)
      .join(", ") || "none";
  line(io, `restored       ${list((c) => c.restored)}`);
  line(io, `reverted       ${list((c) => c.reverted)}`);
  line(io, `kept (changed) ${list((c) => c.changedKept)}`);
  line(io, `kept (new)     ${list((c) => c.createdSinceKept)}`);
  if (applied.removedAccount) line(io, `removed        the new, empty account ${applied.removedAccount}`);
}

export function showHistory(io: Io, records: (RecoveredRecord & { state: string })[]) {
  if (!records.length) return line(io, "no recoveries recorded");
  line(
    io,
    table([
      ["id", "when", "by", "scope", "source", "mode", "restored", "state"],
      ...records.map((r) => [
        r.id?.slice(0, 8) ?? "-",
        r.at,
        r.by,
        r.scope.kind === "user" ? r.scope.email : `${r.scope.kind} ${r.scope.id}`,
        r.source,
        r.mode + (r.revertChanged ? " +revert-changed" : ""),
        Object.entries(r.tables)
          .filter(([, c]) => c.restored + c.reverted > 0)
          .map(([t, c]) => `${t} ${c.restored + c.reverted}`)
          .join(", ") || "none",
        r.state,
      ]),
    ]),
  );
}

/** What an undo will do, table by table: rows the recovery inserted go, rows it changed or removed come back. */
export function showUndo(io: Io, path: string, record: RecoveredRecord, counts: UndoCounts) {
  line(io, `record     ${path}`);
  line(io, `recovery   ${record.id} at ${record.at} by ${record.by}, from ${record.source}`);
  const scope = record.scope.kind === "user" ? record.scope.email : `${record.scope.kind} ${record.scope.id}`;
  const owner = record.owner && record.scope.kind !== "user" ? ` (owner ${record.owner})` : "";
  line(io, `scope      ${scope}${owner}, mode ${record.mode}${record.revertChanged ? " +revert-changed" : ""}`);
  line(io);
  line(
    io,
    table([
      ["table", "remove (recovered)", "put back (old version)", "bring back (removed)"],
      ...Object.entries(counts).map(([t, c]) => [t, c.deleted, c.putBack, c.reinserted]),
    ]),
  );
}
