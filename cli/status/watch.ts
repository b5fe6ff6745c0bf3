import type { Context, Subcommand } from "../command.ts";
import { untilSignal } from "../signals.ts";
import { ShinkeiError } from "../../src/errors.ts";
import { formatDuration, parseDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { databaseState } from "./report.ts";
import { readPitrSnapshot, readSnapshot } from "../../src/metrics/snapshot.ts";
import { archiveTrust } from "../../src/wal/trust.ts";
import { ago, statusView } from "../../src/metrics/view.ts";
import { offsiteStore } from "../../src/storage/stores.ts";
import { describeTarget } from "../../src/pg/db.ts";

const CLEAR = "\x1b[H\x1b[2J";

/** The status page's headline figures as lines of text: one screen, read from the same snapshot. */
async function screen(ctx: Context, every: string): Promise<string[]> {
  const { config } = ctx;
  const out = [
    `shinkei status · ${new Date().toISOString().slice(0, 19).replace("T", " ")} UTC · every ${every} · Ctrl-C to stop`,
    "",
  ];
  // An unreadable folder is what to show, not a reason to stop watching.
  const owner = describeTarget(config.databaseUrl);
  const read = await readSnapshot(config.backupDir, offsiteStore(config), {
    owner,
    manifestKey: config.backup.age?.manifestKey,
  }).then(
    (s) => ({ s }),
    (e: Error) => ({ error: e.message }),
  );
  if ("error" in read) return [...out, `✖ the backup folder cannot be read: ${read.error}`];
  const pitrRead =
    config.wal.archive === "stream"
      ? await readPitrSnapshot(config.backupDir, archiveTrust(config.backup.age)).then(
          (p) => ({ p }),
          (e: Error) => ({ error: e.message }),
        )
      : null;
  const view = statusView(read.s, config.backup, new Date(), pitrRead && "p" in pitrRead ? pitrRead.p : null);
  if (pitrRead && "error" in pitrRead)
    view.problems.unshift({ level: "bad", text: `The WAL archive cannot be read: ${pitrRead.error}` });
  out.push(view.headline.text);
  const n = view.newest;
  const took = !n || n.durationMs === null ? "" : ` in ${formatDuration(n.durationMs)}`;
  out.push(`newest backup   ${n ? `${n.name}, ${ago(n.ageMs)}, ${formatBytes(n.sizeBytes)}${took}` : "none"}`);
  const d = view.lastDrill;
  out.push(`last drill      ${d ? `${d.passed ? "passed" : "FAILED"} ${ago(d.ageMs)} (${d.backup})` : "none yet"}`);
  out.push(
    `off-site        ${view.offsitePending === null ? "no store configured" : `${view.offsitePending} pending`}`,
  );
  const p = view.pitr;
  if (p) {
    const window = p.window ? `${p.window.earliest.toISOString()} .. ${p.window.latest.toISOString()}` : "none yet";
    out.push(`pitr window     ${window}${p.newestWalAgeMs === null ? "" : `, newest WAL ${ago(p.newestWalAgeMs)}`}`);
    const base = p.newestBase;
    out.push(`base backup     ${base ? `${base.name}, ${ago(base.ageMs)}, ${formatBytes(base.sizeBytes)}` : "none"}`);
    const drill = p.lastDrill;
    out.push(`pitr drill      ${drill ? `${drill.passed ? "passed" : "FAILED"} ${ago(drill.ageMs)}` : "none yet"}`);
  }
  // The database may be down while the backups are fine: say so, and keep watching.
  const db = await databaseState(ctx.db, config.databaseUrl).then(
    (s) =>
      `${s.database} on ${s.host}:${s.port}, schema ${s.schemaVersion} ` +
      `of ${s.latestSchemaVersion}, ${formatBytes(s.sizeBytes)}`,
    (e: Error) => `unreachable: ${e.message}`,
  );
  out.push(`database        ${db}`, "");
  out.push(
    ...(view.problems.length
      ? view.problems.map((p) => `${p.level === "bad" ? "✖" : "▲"} ${p.text}`)
      : ["✔ backups, drills and off-site copies are within their limits"]),
  );
  return out;
}

/** Redraw every `--interval` (default 2s) until Ctrl-C or SIGTERM, which end it with exit code 0. */
export async function watch(ctx: Context): Promise<number> {
  const text = ctx.option("interval") ?? "2s";
  const ms = parseDuration(text);
  if (ms === null || ms < 1000 || ms > 3_600_000)
    throw new ShinkeiError("USAGE", `--interval must be a duration from 1s to 1h, such as 5s; got ${text}`);
  const tty = Boolean((ctx.io.stdout as NodeJS.WriteStream).isTTY);
  let stopped = false;
  const signal = untilSignal().then(() => {
    stopped = true;
  });
  while (!stopped) {
    const lines = await screen(ctx, text);
    ctx.io.stdout.write((tty ? CLEAR : "") + lines.join("\n") + "\n" + (tty ? "" : "\n"));
    await Promise.race([Bun.sleep(ms), signal]);
  }
  return 0;
}

/** `shinkei status --watch`: the status page's headline figures, redrawn until Ctrl-C. */
export const watchForm: Subcommand = {
  flag: "watch",
  summary: "keep showing the backup headline figures, refreshing",
  description: `Shows the status page's headline figures instead, redrawn every --interval
until Ctrl-C: the last verified restore, the newest backup, the last drill, off-site copies
pending, the database, and what is wrong.`,
  options: {
    watch: { type: "boolean", description: "keep showing the backup headline figures, refreshing" },
    interval: { type: "string", value: "D", description: "with --watch: how often to refresh (1s to 1h, default 2s)" },
  },
  refuse: (names) =>
    names.includes("json")
      ? new ShinkeiError("USAGE", "--watch and --json do not go together; for figures a script reads, scrape /metrics")
      : undefined,
  run: watch,
};
