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
    // Only a known name within two edits can make this one a typo: measuring every name in the
    // environment exactly against every known one cost tens of milliseconds at every start.
    const [closest, distance] = nearest(upper, known, TYPO_MAX);
    if (distance <= (Math.min(upper.length, closest.length) < 8 ? 1 : 2)) {
      throw new ShinkeiError("CONFIG_INVALID", `${name} is not a shinkei variable; did you mean ${closest}?`, {
        hint:
          `Rename it to ${closest} (until then its value is ignored and ${closest} keeps its default), or ` +
          `remove it.`,
      });
    }
    if ([...prefixes].some((p) => upper.startsWith(p)))
      warnings.push(`${name} is not a shinkei variable and is ignored (the closest is ${nearest(upper, known)[0]})`);
  }
  return warnings;
}

/** The most edits a typo of a known name may be (see the check above). */
const TYPO_MAX = 2;

/** The first known name nearest to `name`, among those that can be `within` edits of it at most. */
function nearest(name: string, known: readonly string[], within = Infinity): [string, number] {
  let best: [string, number] = ["", Infinity];
  for (const k of known) {
    // Every edit changes the length by one at most: a name further off in length is further off.
    if (Math.abs(k.length - name.length) > within) continue;
    const d = editDistance(name, k, within);
    if (d < best[1]) best = [k, d];
  }
  return best;
}

/**
 * Levenshtein distance where swapping two neighbouring letters counts as one edit; past `within`,
 * only that it is more (the exact number is not worked out).
 */
function editDistance(a: string, b: string, within = Infinity): number {
  // Three rows of the table (a swap looks two rows back), not the whole table.
  let older = new Int32Array(b.length + 1);
  let prev = new Int32Array(b.length + 1);
  let row = new Int32Array(b.length + 1);
  for (let j = 0; j <= b.length; j++) prev[j] = j;
  let prevMin = 0;
  for (let i = 1; i <= a.length; i++) {
    row[0] = i;
    let min = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, older[j - 2]! + 1);
      row[j] = d;
      if (d < min) min = d;
    }
    // Every later cell comes from one of the last two rows and adds to it: both past `within`, so is the end.
    if (min > within && prevMin > within) return within + 1;
    prevMin = min;
    [older, prev, row] = [prev, row, older];
  }
  return prev[b.length]!;
}
