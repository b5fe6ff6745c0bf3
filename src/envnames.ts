import { ShinkeiError } from "./errors.ts";

/**
 * Names in the environment that look like ours but are not. A misspelt variable is otherwise
 * silently ignored and its default applies: `BACKUP_KEEP_DAY=90` would keep 30 days of backups.
 *
 * - A near miss of a known name (one edit for short names, two for longer ones, any letter case)
 *   is refused: it is almost surely a typo, and the setting the operator meant is not in effect.
 * - Any other name with one of our prefixes is a warning: it may belong to a newer or older
 *   version sharing the same environment, and refusing it would break that upgrade path.
 */

/** Prefixes only we use, including those of features an older binary may meet in a newer .env. */
const RESERVED_PREFIXES = ["SHINKEI_", "BACKUP_", "DRILL_", "S3_", "WAL_", "PITR_"];
/** Prefixes other software reads too (the AWS SDK, Node, other apps' DATABASE_*): not ours to judge. */
const SHARED_PREFIXES = ["AWS_", "NODE_", "DATABASE_"];

export function checkVariableNames(env: Record<string, string | undefined>, known: readonly string[]): string[] {
  const prefixes = new Set(RESERVED_PREFIXES);
  for (const name of known) if (name.includes("_")) prefixes.add(name.slice(0, name.indexOf("_") + 1));
  for (const p of SHARED_PREFIXES) prefixes.delete(p);
  const warnings: string[] = [];
  for (const name of Object.keys(env).sort()) {
    if (env[name] === undefined || known.includes(name)) continue;
    const upper = name.toUpperCase();
    // Only a name within two edits can be refused: most of an environment is not compared in full
    // (every command pays this at start, and restore_command runs one for each WAL segment).
    const [near, distance] = nearest(upper, known, 2);
    if (distance <= (Math.min(upper.length, near.length) < 8 ? 1 : 2)) {
      throw new ShinkeiError("CONFIG_INVALID", `${name} is not a shinkei variable; did you mean ${near}?`, {
        hint: `Rename it to ${near} (until then its value is ignored and ${near} keeps its default), or remove it.`,
      });
    }
    if ([...prefixes].some((p) => upper.startsWith(p))) {
      const [closest] = nearest(upper, known, Infinity);
      warnings.push(`${name} is not a shinkei variable and is ignored (the closest is ${closest})`);
    }
  }
  return warnings;
}

/** The first known name at the least distance, when that is at most `limit` (else ["", Infinity]). */
function nearest(name: string, known: readonly string[], limit: number): [string, number] {
  let best: [string, number] = ["", Infinity];
  for (const k of known) {
    const bound = Math.min(limit, best[1] - 1);
    if (Math.abs(k.length - name.length) > bound) continue;
    const d = editDistance(name, k, bound);
    if (d < best[1]) best = [k, d];
  }
  return best;
}

/**
 * Levenshtein distance where swapping two neighbouring letters counts as one edit, or Infinity as
 * soon as it must exceed `bound` (a row's smallest entry never decreases further down).
 */
function editDistance(a: string, b: string, bound: number): number {
  let before = new Array<number>(b.length + 1).fill(0);
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  let current = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    current[0] = i;
    let least = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, before[j - 2]! + 1);
      current[j] = d;
      if (d < least) least = d;
    }
    // A transposition reaches back two rows, so a row is past the bound only when the one before is too.
    if (least > bound && Math.min(...previous) > bound) return Infinity;
    [before, previous, current] = [previous, current, before];
  }
  return previous[b.length]! <= bound ? previous[b.length]! : Infinity;
}
