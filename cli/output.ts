import { styleText } from "node:util";
import type { Io } from "./io.ts";
import { ShinkeiError } from "../src/errors.ts";

export const color = (io: Io, style: Parameters<typeof styleText>[0], text: string) =>
  styleText(style, text, { stream: io.stderr as NodeJS.WriteStream });

export function line(io: Io, text = "") {
  io.stdout.write(text + "\n");
}

export function json(io: Io, value: unknown) {
  io.stdout.write(JSON.stringify(value, null, 2) + "\n");
}

/** Align columns; the first row is the header. */
export function table(rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (typeof rows[1]?.[i] === "number" ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** The one place an error becomes terminal output: a red line, a hint, and the exit code. */
export function reportError(io: Io, error: unknown, usage?: string): number {
  if (error instanceof ShinkeiError) {
    io.stderr.write(`${color(io, "red", `✖ ${error.message}`)}\n`);
    if (error.hint) io.stderr.write(`${color(io, "dim", `  ${error.hint}`)}\n`);
    if (error.code === "USAGE" && usage) io.stderr.write(`\n${usage}\n`);
    if (io.env.SHINKEI_DEBUG && error.cause) io.stderr.write(`${(error.cause as Error).stack ?? error.cause}\n`);
    return error.exitCode;
  }
  const e = error as Error;
  io.stderr.write(`${color(io, "red", `✖ unexpected error: ${e?.message ?? String(error)}`)}\n`);
  if (io.env.SHINKEI_DEBUG) io.stderr.write(`${e?.stack}\n`);
  else io.stderr.write(`${color(io, "dim", "  Run again with SHINKEI_DEBUG=1 for details.")}\n`);
  return 1;
}

export function warn(io: Io, text: string) {
  io.stderr.write(`${color(io, "yellow", `▲ ${text}`)}\n`);
}
