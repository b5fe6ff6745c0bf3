/**
 * PostgreSQL's WAL file names and positions. A segment is `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline,
 * then the segment number split at 4 GiB), a timeline history file is `TTTTTTTT.history`; an LSN
 * is a byte position written `X/Y` in hex. Names are checked against these patterns before any
 * file is read, moved or deleted, so nothing else in a folder is ever ours to touch.
 */
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024;

const SEGMENT = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/;
const HISTORY = /^([0-9A-F]{8})\.history$/;

export type SegmentName = { name: string; timeline: number; segno: bigint };

export function parseSegment(name: string, segmentBytes = DEFAULT_SEGMENT_BYTES): SegmentName | null {
  const m = SEGMENT.exec(name);
  if (!m) return null;
  const perId = 0x1_0000_0000n / BigInt(segmentBytes);
  const low = BigInt(`0x${m[3]}`);
  if (low >= perId) return null;
  const timeline = parseInt(m[1]!, 16);
  if (timeline === 0) return null;
  return { name, timeline, segno: BigInt(`0x${m[2]}`) * perId + low };
}

/** A segment's name for some segment size (the smallest, 1 MiB, allows the widest names): the shape alone. */
export const isSegmentName = (name: string) => parseSegment(name, 1024 * 1024) !== null;

export function segmentName(timeline: number, segno: bigint, segmentBytes = DEFAULT_SEGMENT_BYTES): string {
  const perId = 0x1_0000_0000n / BigInt(segmentBytes);
  const hex = (n: bigint | number, w = 8) => n.toString(16).toUpperCase().padStart(w, "0");
  return hex(timeline) + hex(segno / perId) + hex(segno % perId);
}

export function parseHistory(name: string): number | null {
  const m = HISTORY.exec(name);
  return m ? parseInt(m[1]!, 16) : null;
}

export const timelineDir = (timeline: number) => timeline.toString(16).toUpperCase().padStart(8, "0");

export function parseLsn(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not a WAL position (LSN) such as 0/3000060`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffff_ffffn).toString(16).toUpperCase()}`;
}

/** The segment that holds byte `lsn`. */
export const segnoOf = (lsn: bigint, segmentBytes = DEFAULT_SEGMENT_BYTES) => lsn / BigInt(segmentBytes);
export const segmentStart = (segno: bigint, segmentBytes = DEFAULT_SEGMENT_BYTES) => segno * BigInt(segmentBytes);
