/**
 * Load generator for /password-reset, run as its own process: `concurrency` connections send
 * requests for known and unknown addresses interleaved (even, odd), so both kinds meet the same
 * server state, and every latency is recorded by kind. Prints one JSON line of distributions.
 *   bun test/bench/reset-load.ts BASE_URL SECONDS CONCURRENCY ACCOUNTS
 */
const [base, secondsText, concurrencyText, accountsText] = process.argv.slice(2);
const seconds = Number(secondsText),
  concurrency = Number(concurrencyText),
  accounts = Number(accountsText);
const samples = { known: [] as number[], unknown: [] as number[] };
const statuses: Record<string, number> = {};
const bodies = new Set<string>();
const deadline = performance.now() + seconds * 1000;
let n = 0;

async function worker() {
  while (performance.now() < deadline) {
    const i = n++;
    const kind = i % 2 ? "unknown" : "known";
    const email = `${kind}${Math.floor(i / 2) % accounts}@bench.test`;
    const start = performance.now();
    const r = await fetch(`${base}/api/v1/auth/password-reset`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email }),
    });
    const body = await r.text();
    samples[kind].push(performance.now() - start);
    statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    if (r.status === 202) bodies.add(body);
  }
}

const q = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;
const summary = (xs: number[]) => {
  xs.sort((a, b) => a - b);
  return {
    n: xs.length,
    p50: q(xs, 50),
    p90: q(xs, 90),
    p99: q(xs, 99),
    max: xs.at(-1)!,
    mean: xs.reduce((a, b) => a + b, 0) / xs.length,
  };
};

await Promise.all(Array.from({ length: concurrency }, worker));
console.log(
  JSON.stringify({
    known: summary(samples.known),
    unknown: summary(samples.unknown),
    statuses,
    distinctBodies: bodies.size,
    rps: (samples.known.length + samples.unknown.length) / seconds,
  }),
);
export {};
