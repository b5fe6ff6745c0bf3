/**
 * `bun run bench:smoke`: every benchmark at the smallest size that still walks all of its steps, one
 * after another, so a bench that no longer runs to its end fails CI. No figures are kept (`--smoke`).
 */
import { join } from "node:path";

const dir = import.meta.dir;
const benches: [string, string[]][] = [
  ["run.ts", ["--sizes", "2MB", "--runs", "1", "--seconds", "1"]],
  ["recover.ts", ["--size", "2MB"]],
  ["pitr.ts", ["--seconds", "2", "--scale", "1"]],
  ["pitr-restore.ts", ["--scale", "1", "--wal-mib", "16"]],
  ["soak.ts", ["--seconds", "20", "--rate", "50"]],
  // Its waits end at --deadline (seconds) each: a restored server that never answers fails it, saying why.
  ["peers.ts", ["--scale", "1", "--rounds", "1", "--seconds", "2", "--loss-seconds", "2", "--deadline", "300"]],
  ["wal-cost.ts", ["--rounds", "1", "--seconds", "2", "--scale", "1", "--modes", "off,ours,bare"]],
];
// Each bench at this size takes a minute or two: one that runs past this is stuck, and CI must not wait on it.
const limitMinutes = 20;
const failed: string[] = [];
for (const [file, args] of benches) {
  const started = performance.now();
  console.log(`\n== bench ${file} ${args.join(" ")} --smoke`);
  const p = Bun.spawn(["bun", join(dir, file), ...args, "--smoke"], { stdout: "inherit", stderr: "inherit" });
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    p.kill("SIGTERM");
    setTimeout(() => p.kill("SIGKILL"), 10_000);
  }, limitMinutes * 60_000);
  const code = await p.exited;
  clearTimeout(timer);
  if (late) console.error(`== ${file}: still running after ${limitMinutes} minutes; stopped`);
  console.log(`== ${file}: exit ${code} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  if (code !== 0 || late) failed.push(file);
}
if (failed.length) {
  console.error(`bench smoke: ${failed.join(", ")} did not run to the end`);
  process.exit(1);
}
console.log("bench smoke: every benchmark ran to its end");
