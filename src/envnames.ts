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
    const [closest, distance] = nearest(upper, known);
    if (distance <= (Math.min(upper.length, closest.length) < 8 ? 1 : 2)) {
      throw new ShinkeiError("CONFIG_INVALID", `${name} is not a shinkei variable; did you mean ${closest}?`, {
        hint:
          `Rename it to ${closest} (until then its value is ignored and ${closest} keeps its default), or ` +
          `remove it.`,
      });
    }
    if ([...prefixes].some((p) => upper.startsWith(p)))
      warnings.push(`${name} is not a shinkei variable and is ignored (the closest is ${closest})`);
  }
  return warnings;
}

function nearest(name: string, known: readonly string[]): [string, number] {
  let best: [string, number] = ["", Infinity];
  for (const k of known) {
    const d = editDistance(name, k);
    if (d < best[1]) best = [k, d];
  }
  return best;
}

/** Levenshtein distance where swapping two neighbouring letters counts as one edit. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}
