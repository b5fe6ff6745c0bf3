/** @jsxImportSource hono/jsx */
import type { StatusView } from "../../src/metrics/view.ts";
import { ago } from "../../src/metrics/view.ts";
import { formatDuration } from "../../src/duration.ts";
import { formatBytes } from "../../src/bytes.ts";
import { LineChart, Timeline, isBad } from "./charts.tsx";

export const REFRESH_SECONDS = 30;
/** How many events the table lists; the timeline above draws them all. */
const EVENT_ROWS = 200;

// No script anywhere: the page refreshes itself with <meta refresh>, and a notice that only a CSS
// animation delay reveals says the data is stale when no refresh has come for three intervals.
const css = `
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:960px;padding:1rem;color:#222}
h1{font-size:1.6rem;margin:.3rem 0}.ok{color:#2e7d32}.warn{color:#b26a00}.bad{color:#c62828}
.problems li{margin:.2rem 0}.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #eee;padding:.2rem .4rem;text-align:left}
.muted{color:#666;font-size:13px}
#stale{position:fixed;top:0;left:0;right:0;visibility:hidden;background:#c62828;color:#fff;padding:.5rem;
  font-weight:bold}
#stale{animation:reveal 0s linear ${REFRESH_SECONDS * 3}s forwards}@keyframes reveal{to{visibility:visible}}
.legend span{margin-right:1rem}
.dot{display:inline-block;width:.7rem;height:.7rem;border-radius:50%;margin-right:.25rem}`;

const when = (d: Date) => d.toISOString().slice(0, 19).replace("T", " ") + " UTC";

export function StatusPage(props: { view: StatusView; host: string }) {
  const v = props.view;
  const worst = v.problems.some((p) => p.level === "bad") ? "bad" : v.problems.length ? "warn" : "ok";
  const state = worst === "ok" ? "OK" : worst === "warn" ? "WARNING" : "PROBLEM";
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta http-equiv="refresh" content={String(REFRESH_SECONDS)} />
        <title>{`${state} · shinkei backups · ${props.host}`}</title>
        <style>{css}</style>
      </head>
      <body>
        <div id="stale" role="alert">
          This page is stale: it has not refreshed for {REFRESH_SECONDS * 3} seconds. The figures below are from{" "}
          {when(v.readAt)}.
        </div>
        <h1 id="headline" class={v.headline.level}>
          {v.headline.text}
        </h1>
        <p class="muted" id="read-at">
          Backup folder read at {when(v.readAt)} on {props.host}; this page refreshes every {REFRESH_SECONDS} seconds.
          Read-only: every change is made with the shinkei CLI.
        </p>
        {v.problems.length ? (
          <ul class="problems" id="problems">
            {v.problems.map((p) => (
              <li class={p.level}>{p.text}</li>
            ))}
          </ul>
        ) : (
          <p class="ok" id="problems">
            Backups, drills and off-site copies are all within their limits.
          </p>
        )}
        <div class="facts" id="facts">
          <span>newest good backup</span>
          <span id="newest">
            {v.newest
              ? `${v.newest.name}, ${ago(v.newest.ageMs)}, ${formatBytes(v.newest.sizeBytes)}` +
                (v.newest.durationMs === null ? "" : ` in ${formatDuration(v.newest.durationMs)}`)
              : "none"}
          </span>
          <span>last restore drill</span>
          <span id="last-drill" class={v.lastDrill ? (v.lastDrill.passed ? "ok" : "bad") : ""}>
            {v.lastDrill
              ? `${v.lastDrill.passed ? "passed" : "FAILED"} ${ago(v.lastDrill.ageMs)} (${v.lastDrill.backup})`
              : "none yet"}
          </span>
          <span>off-site pending</span>
          <span id="offsite-pending">
            {v.offsitePending === null ? "no off-site store configured" : String(v.offsitePending)}
          </span>
          {v.pitr ? <PitrFacts p={v.pitr} /> : null}
        </div>
        <h2>Last 30 days</h2>
        <p class="legend muted">
          <span>
            <i class="dot" style="background:#2f6fdf"></i>backup
          </span>
          <span>
            <i class="dot" style="background:#2e7d32"></i>drill passed
          </span>
          <span>
            <i class="dot" style="background:#c62828"></i>failed
          </span>
          <span>
            <i class="dot" style="background:#7b1fa2"></i>off-site copy
          </span>
          {v.pitr ? (
            <span>
              <i class="dot" style="background:#00838f"></i>base backup
            </span>
          ) : null}
          {v.pitr ? (
            <span>
              <i class="dot" style="background:#80cbc4;border-radius:0"></i>recoverable window
            </span>
          ) : null}
        </p>
        <Timeline
          events={v.events}
          start={v.window.start}
          end={v.window.end}
          pitr={v.pitr !== null}
          band={v.pitr?.window ? { start: v.pitr.window.earliest, end: v.pitr.window.latest } : null}
        />
        <h2>Backup size</h2>
        <LineChart
          id="size-chart"
          label="backup size over time"
          points={v.sizes}
          start={v.window.start}
          end={v.window.end}
          format={formatBytes}
        />
        <h2>Backup duration</h2>
        <LineChart
          id="duration-chart"
          label="backup duration over time"
          points={v.durations}
          start={v.window.start}
          end={v.window.end}
          format={formatDuration}
        />
        <h2>Events</h2>
        <table id="events">
          <thead>
            <tr>
              <th>when (UTC)</th>
              <th>event</th>
              <th>backup</th>
            </tr>
          </thead>
          <tbody>
            {v.events.slice(0, EVENT_ROWS).map((e) => (
              <tr data-kind={e.kind}>
                <td>{e.at.toISOString().slice(0, 16).replace("T", " ")}</td>
                <td class={isBad(e) ? "bad" : ""}>{e.text}</td>
                <td>{e.backup}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {v.events.length > EVENT_ROWS ? (
          <p class="muted">and {v.events.length - EVENT_ROWS} older events in the timeline above.</p>
        ) : null}
        {v.events.length === 0 ? <p class="muted">Nothing happened in the last 30 days.</p> : null}
      </body>
    </html>
  );
}

/** The point-in-time rows of the facts: the window, how fresh its end is, the base backup, the drill. */
function PitrFacts(props: { p: NonNullable<StatusView["pitr"]> }) {
  const p = props.p;
  const d = p.lastDrill;
  return (
    <>
      <span>point-in-time window</span>
      <span id="pitr-window" class={p.window && !p.gapsAfterNewestBase ? "" : "bad"}>
        {p.window ? `${when(p.window.earliest)} .. ${when(p.window.latest)}` : "none yet"}
        {p.gapsAfterNewestBase
          ? ` (${p.gapsAfterNewestBase} gap${p.gapsAfterNewestBase === 1 ? "" : "s"} after the newest base backup)`
          : ""}
      </span>
      <span>newest WAL received</span>
      <span id="pitr-newest-wal">
        {p.newestWalAgeMs === null ? "none yet" : `${ago(p.newestWalAgeMs)} (it ages while the app is idle)`}
      </span>
      <span>newest base backup</span>
      <span id="pitr-base">
        {p.newestBase
          ? `${p.newestBase.name}, ${ago(p.newestBase.ageMs)}, ${formatBytes(p.newestBase.sizeBytes)} ` +
            `in ${formatDuration(p.newestBase.durationMs)}`
          : "none"}
      </span>
      <span>last point-in-time drill</span>
      <span id="pitr-drill" class={d ? (d.passed ? "ok" : "bad") : ""}>
        {d
          ? `${d.passed ? "passed" : "FAILED"} ${ago(d.ageMs)}` +
            (d.rtoMs === null ? "" : `, recovered in ${formatDuration(d.rtoMs)}`)
          : "none yet"}
      </span>
    </>
  );
}

/** When the backup folder cannot be read: that is the news, and the page keeps refreshing until it can. */
export function UnreadablePage(props: { error: string; dir: string }) {
  const retry = `this page tries again every ${REFRESH_SECONDS} seconds.`;
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta http-equiv="refresh" content={String(REFRESH_SECONDS)} />
        <title>PROBLEM · shinkei backups</title>
        <style>{css}</style>
      </head>
      <body>
        <h1 id="headline" class="bad">
          The backup folder cannot be read
        </h1>
        <p id="problems" class="bad">
          {props.error}
        </p>
        <p class="muted">
          BACKUP_DIR is {props.dir}. Check that it is mounted and readable by this process; {retry}
        </p>
      </body>
    </html>
  );
}
