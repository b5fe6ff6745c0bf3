/**
 * Part of `bun run lint`: fails on a line over 120 characters in the TypeScript sources. Biome's
 * formatter breaks code at 120, but leaves a long string, template, regex or comment as it is.
 */
import { Glob } from "bun";

const MAX = 120;
const long: { file: string; line: number; width: number }[] = [];
for (const dir of ["src", "cli", "server", "test"]) {
  for await (const path of new Glob("**/*.{ts,tsx}").scan({ cwd: dir })) {
    const file = `${dir}/${path}`;
    (await Bun.file(file).text()).split("\n").forEach((line, i) => {
      const width = [...line].length;
      if (width > MAX) long.push({ file, line: i + 1, width });
    });
  }
}
if (long.length) {
  console.error(`${long.length} line(s) over ${MAX} characters (split strings with +, rewrap comments):`);
  long.sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line);
  for (const l of long) console.error(`${l.file}:${l.line}: ${l.width} characters`);
  process.exit(1);
}
