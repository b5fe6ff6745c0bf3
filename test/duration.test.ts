import { expect, test } from "bun:test";
import { formatDuration, parseDuration } from "../src/duration.ts";

const S = 1000;
const M = 60 * S;
const H = 60 * M;
const D = 24 * H;

test.each([
  ["500ms", 500],
  ["90s", 90 * S],
  ["15m", 15 * M],
  ["26h", 26 * H],
  ["30d", 30 * D],
  ["2w", 14 * D],
  ["90", 90 * S], // a bare number is seconds
  ["0", 0],
  ["1.5h", 1.5 * H],
  [" 10 m ", 10 * M],
  ["5ms", 5], // not 5 minutes and an "s"
  ["0.0004s", 0], // rounded to whole milliseconds
])("parseDuration(%j) is %d ms", (text, ms) => {
  expect(parseDuration(text)).toBe(ms);
});

test.each(["", "  ", "forever", "-5s", "1y", "1h30m", "1e3", "5 minutes", ".5s", "ms", "10M", "10 S", "0x10", "1,5h"])(
  "parseDuration(%j) is no duration",
  (text) => {
    expect(parseDuration(text)).toBeNull();
  },
);

test.each([
  [0, "0ms"],
  [999, "999ms"],
  [S, "1.0s"],
  [1500, "1.5s"],
  [59 * S, "59.0s"],
  [M, "1m 0s"],
  [90 * S, "1m 30s"],
  [H, "1h 0m"],
  [90 * M, "1h 30m"],
  [D, "1d 0h"],
  [26 * H, "1d 2h"],
  [30 * D, "30d 0h"],
  // Each unit is rounded once: no "60.0s", "59m 60s" or "23h 60m" at the edges.
  [59_999, "1m 0s"],
  [H - 1, "1h 0m"],
  [D - 1, "1d 0h"],
  [999.7, "1.0s"],
])("formatDuration(%d) is %j", (ms, text) => {
  expect(formatDuration(ms)).toBe(text);
});
