import type { WalRecord } from "./archive.ts";
import { parseSegment, segmentName } from "./segments.ts";

export type Gap = { timeline: number; from: string; to: string; segments: number };

/**
 * Missing segments between the first and last present one of each timeline. `extra` names
 * segments held elsewhere (the one still being received) that count as present.
 */
export function findGaps(records: WalRecord[], segmentBytes: number, extra: string[] = []): Gap[] {
  const byTimeline = new Map<number, bigint[]>();
  const names = records
    .filter((r) => r.kind === "segment")
    .map((r) => r.name)
    .concat(extra);
  for (const n of names) {
    const s = parseSegment(n, segmentBytes);
    if (!s) continue;
    byTimeline.set(s.timeline, [...(byTimeline.get(s.timeline) ?? []), s.segno]);
  }
  const gaps: Gap[] = [];
  for (const [timeline, segnos] of [...byTimeline].sort((a, b) => a[0] - b[0])) {
    const sorted = [...new Set(segnos)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      const next = sorted[i]!;
      if (next !== prev + 1n) {
        gaps.push({
          timeline,
          from: segmentName(timeline, prev + 1n, segmentBytes),
          to: segmentName(timeline, next - 1n, segmentBytes),
          segments: Number(next - prev - 1n),
        });
      }
    }
  }
  return gaps;
}
