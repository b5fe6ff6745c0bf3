/** @jsxImportSource hono/jsx */
import type { Point, TimelineEvent } from "../../src/metrics/view.ts";

// Inline SVG drawn on the server: no chart library, no script, and it prints.
const W = 900;
const LEFT = 90;
const PLOT = W - LEFT - 10;
const DAY = 86_400_000;

const colour: Record<TimelineEvent["kind"], string> = {
  backup: "#2f6fdf",
  "backup-bad": "#c62828",
  "drill-passed": "#2e7d32",
  "drill-failed": "#c62828",
  offsite: "#7b1fa2",
  base: "#00838f",
  "wal-gap": "#c62828",
};

type Row = { label: string; kinds: TimelineEvent["kind"][]; band?: boolean };
const dumpRows: Row[] = [
  { label: "backups", kinds: ["backup", "backup-bad"] },
  { label: "drills", kinds: ["drill-passed", "drill-failed"] },
  { label: "off-site", kinds: ["offsite"] },
];
// With the WAL archive: base backups, and the recoverable window as a band with its gaps on it.
const pitrRows: Row[] = [
  { label: "base backups", kinds: ["base"] },
  { label: "WAL window", kinds: ["wal-gap"], band: true },
];

export const isBad = (e: TimelineEvent) => e.kind === "drill-failed" || e.kind === "backup-bad" || e.kind === "wal-gap";

const day = (d: Date) => d.toISOString().slice(5, 10);

function xOf(at: Date, start: Date, end: Date): number {
  const span = Math.max(1, end.getTime() - start.getTime());
  return LEFT + ((at.getTime() - start.getTime()) / span) * PLOT;
}

function DayGrid(props: { start: Date; end: Date; height: number }) {
  const ticks: Date[] = [];
  for (let t = Math.ceil(props.start.getTime() / DAY) * DAY; t <= props.end.getTime(); t += 5 * DAY)
    ticks.push(new Date(t));
  return (
    <g>
      {ticks.map((d) => {
        const x = xOf(d, props.start, props.end);
        return (
          <g>
            <line x1={x} x2={x} y1={0} y2={props.height - 16} stroke="#ddd" />
            <text x={x} y={props.height - 3} font-size="11" text-anchor="middle" fill="#555">
              {day(d)}
            </text>
          </g>
        );
      })}
    </g>
  );
}

/**
 * Thirty days, one row per kind of event; failed things are drawn larger and red. `band` is the
 * point-in-time window, drawn on the WAL row when the archive is on.
 */
export function Timeline(props: {
  events: TimelineEvent[];
  start: Date;
  end: Date;
  band?: { start: Date; end: Date } | null;
  pitr?: boolean;
}) {
  const rows = props.pitr ? [...dumpRows, ...pitrRows] : dumpRows;
  const rowH = 30;
  const height = rows.length * rowH + 20;
  const clip = (d: Date) => new Date(Math.min(props.end.getTime(), Math.max(props.start.getTime(), d.getTime())));
  return (
    <svg viewBox={`0 0 ${W} ${height}`} width="100%" role="img" aria-label="timeline of the last 30 days" id="timeline">
      <DayGrid start={props.start} end={props.end} height={height} />
      {rows.map((row, i) => {
        const y = i * rowH + rowH / 2;
        return (
          <g>
            <text x={0} y={y + 4} font-size="12" fill="#333">
              {row.label}
            </text>
            <line x1={LEFT} x2={LEFT + PLOT} y1={y} y2={y} stroke="#eee" />
            {row.band && props.band
              ? (() => {
                  const x1 = xOf(clip(props.band.start), props.start, props.end);
                  // At least 2 px: a window of a few minutes is still something to see.
                  const w = Math.max(2, xOf(clip(props.band.end), props.start, props.end) - x1);
                  return (
                    <rect id="wal-window" x={x1.toFixed(1)} y={y - 6} width={w.toFixed(1)} height={12} fill="#80cbc4">
                      <title>
                        {`recoverable: ${props.band.start.toISOString().slice(0, 19).replace("T", " ")} ` +
                          `.. ${props.band.end.toISOString().slice(0, 19).replace("T", " ")} UTC`}
                      </title>
                    </rect>
                  );
                })()
              : null}
            {/* Failures drawn last, on top: a red mark is never hidden under a green one. */}
            {props.events
              .filter((e) => row.kinds.includes(e.kind))
              .sort((a, b) => Number(isBad(a)) - Number(isBad(b)))
              .map((e) => {
                const bad = isBad(e);
                return (
                  <circle
                    cx={xOf(e.at, props.start, props.end).toFixed(1)}
                    cy={y}
                    r={bad ? 7 : 5}
                    fill={colour[e.kind]}
                    data-kind={e.kind}
                  >
                    <title>{`${e.at.toISOString().slice(0, 16).replace("T", " ")} UTC: ${e.text} (${e.backup})`}</title>
                  </circle>
                );
              })}
          </g>
        );
      })}
    </svg>
  );
}

/** A line over time with its largest value named on the axis; `format` turns a value into text. */
export function LineChart(props: {
  id: string;
  label: string;
  points: Point[];
  start: Date;
  end: Date;
  format: (v: number) => string;
}) {
  const height = 130;
  const top = 10;
  const plotH = height - top - 22;
  const max = Math.max(1, ...props.points.map((p) => p.value));
  const yOf = (v: number) => top + plotH - (v / max) * plotH;
  const coords = props.points.map((p) => `${xOf(p.at, props.start, props.end).toFixed(1)},${yOf(p.value).toFixed(1)}`);
  return (
    <svg viewBox={`0 0 ${W} ${height}`} width="100%" role="img" aria-label={props.label} id={props.id}>
      <DayGrid start={props.start} end={props.end} height={height} />
      <text x={0} y={top + 10} font-size="11" fill="#555">
        {props.format(max)}
      </text>
      <text x={0} y={top + plotH} font-size="11" fill="#555">
        0
      </text>
      <line x1={LEFT} x2={LEFT + PLOT} y1={top + plotH} y2={top + plotH} stroke="#999" />
      {coords.length > 1 ? (
        <polyline points={coords.join(" ")} fill="none" stroke="#2f6fdf" stroke-width="1.5" />
      ) : null}
      {props.points.map((p, i) => (
        <circle cx={coords[i]!.split(",")[0]} cy={coords[i]!.split(",")[1]} r={3} fill="#2f6fdf">
          <title>{`${p.at.toISOString().slice(0, 16).replace("T", " ")} UTC: ${props.format(p.value)}`}</title>
        </circle>
      ))}
      {props.points.length === 0 ? (
        <text x={LEFT + 10} y={top + plotH / 2} font-size="12" fill="#777">
          no good backups in these 30 days
        </text>
      ) : null}
    </svg>
  );
}
