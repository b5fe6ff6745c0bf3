import { expect, test } from "bun:test";
import { join } from "node:path";
import { Metrics } from "../src/metrics/registry.ts";
import { dumpSource } from "../src/metrics/sources.ts";
import { readSnapshot } from "../src/metrics/snapshot.ts";
import { tempDir } from "./support/fixtures.ts";

const ops = join(import.meta.dir, "..", "ops");
type Rule = {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
};

/** Every series name a scrape can hold: histograms and counters as Prometheus names their samples. */
async function exportedNames(): Promise<Set<string>> {
  const dir = await tempDir("alerts");
  const metrics = new Metrics({
    sources: [
      dumpSource(() => readSnapshot(dir, { kind: "s3", location: "s3://alerts/" }), { maxAgeMs: 1, drillMaxAgeMs: 1 }),
    ],
    hashLoad: () => ({ running: 0, waiting: 0 }),
  });
  const names = new Set<string>();
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    names.add(m.name);
    if (String(m.type) === "histogram") for (const s of ["_bucket", "_sum", "_count"]) names.add(m.name + s);
  }
  return names;
}

test("every alert names only metrics shinkei exports, with a severity and a summary", async () => {
  const parsed = Bun.YAML.parse(await Bun.file(join(ops, "alerts.yml")).text()) as {
    groups: { name: string; rules: Rule[] }[];
  };
  const rules = parsed.groups.flatMap((g) => g.rules);
  expect(rules.map((r) => r.alert).sort()).toEqual([
    "ShinkeiBackupFolderUnreadable",
    "ShinkeiBackupTooOld",
    "ShinkeiDrillFailed",
    "ShinkeiNoBackup",
    "ShinkeiNoVerifiedRestore",
    "ShinkeiOffsiteLagging",
    "ShinkeiOffsitePending",
    "ShinkeiPitrLagging",
    "ShinkeiWalDiskFull",
    "ShinkeiWalGap",
    "ShinkeiWalLagUnknown",
    "ShinkeiWalNotSealed",
    "ShinkeiWalReceiverDown",
    "ShinkeiWalSlotAtRisk",
  ]);
  const names = await exportedNames();
  for (const rule of rules) {
    const used = [...rule.expr.matchAll(/\b(shinkei_[a-z0-9_]+)/g)].map((m) => m[1]!);
    expect(used.length, rule.alert).toBeGreaterThan(0);
    for (const name of used) expect(names.has(name), `${rule.alert} uses ${name}`).toBe(true);
    expect(["critical", "warning"]).toContain(rule.labels?.severity ?? "");
    expect(rule.annotations?.summary, rule.alert).toBeString();
  }
});

const promtool = Bun.which("promtool");

test.skipIf(!promtool)("promtool accepts the rules and their unit tests pass (promtool test rules)", async () => {
  for (const args of [
    ["check", "rules", "alerts.yml"],
    ["test", "rules", "alerts.test.yml"],
  ]) {
    const p = Bun.spawn([promtool!, ...args], { cwd: ops, stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([
      new Response(p.stdout).text(),
      new Response(p.stderr).text(),
      p.exited,
    ]);
    if (code !== 0) throw new Error(`promtool ${args.join(" ")} failed:\n${out}${err}`);
    expect(out).toContain("SUCCESS");
  }
});
if (!promtool)
  console.warn("promtool not found (Debian package prometheus): the alert rules were checked by parsing only");
