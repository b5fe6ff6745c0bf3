import { setPriority } from "node:os";
import type { Log } from "../log.ts";
import { toolEnv } from "../pg/tools.ts";
import type { FoundTool } from "../pg/bin.ts";

/** What the server shows as the receiver's application_name (pg_stat_replication). */
export const RECEIVER_APP_NAME = "shinkei_wal";

export type ReceiverOptions = {
  tool: FoundTool;
  url: string;
  spool: string;
  slot?: string;
  synchronous: boolean;
  /** Niceness to run it at (0 to 19): see WalConfig.receiverNice. */
  nice?: number;
  log: Log;
  /** First and longest wait before a restart; the wait doubles while the stream keeps dropping. */
  backoffMs?: { min: number; max: number };
  /** Called with the last lines pg_receivewal wrote before it exited, before it is restarted. */
  onExit?: (lines: string[]) => Promise<void>;
  /** Called with where a (re)started receiver begins streaming, as it reports it. */
  onStart?: (lsn: string, timeline: number) => void;
  /**
   * Where pg_receivewal writes from: where it starts, and where it switches timeline (the spool's
   * signer follows it).
   */
  onPosition?: (lsn: string, timeline: number) => void;
  /** Called before every (re)start, with no receiver running: the spool's files are ours to repair. */
  beforeStart?: () => Promise<void>;
  /**
   * Space the receiver needs to start the next segment (it pads a whole one): below it, a restart
   * only fails again, so the supervisor waits for space, checking every `spaceCheckMs` (1 s), and
   * restarts at once when it returns instead of after the backoff.
   */
  space?: { free: () => Promise<number>; needBytes: number; checkMs?: number };
};

export type Receiver = {
  pid(): number | undefined;
  /** The receiver stopped for want of disk space and waits for it. */
  diskFull(): boolean;
  stop(): Promise<void>;
};

const NO_SPACE = /No space left on device|should be 0 or \d+/;

/**
 * Keep one pg_receivewal running. It exits when the stream drops (--no-loop), and we restart it
 * with a growing wait, so every stop and start is a log line instead of a silent internal retry.
 * A restart resumes from the `.partial` segment in the spool, else from the slot's position.
 */
export function superviseReceiver(o: ReceiverOptions): Receiver {
  const { min, max } = o.backoffMs ?? { min: 1000, max: 30_000 };
  let proc: Bun.Subprocess<"ignore", "ignore", "pipe"> | undefined;
  let stopped = false;
  let wake: (() => void) | undefined;
  let full = false;
  const sleep = (ms: number) =>
    new Promise<void>((done) => {
      const t = setTimeout(done, ms);
      wake = () => (clearTimeout(t), done());
    }).finally(() => (wake = undefined));
  const env: Record<string, string | undefined> = { ...toolEnv(o.url), PGAPPNAME: RECEIVER_APP_NAME };
  delete env.PGDATABASE; // a physical replication connection names no database

  // pdeathsig: a receiver outliving a killed service would hold the slot and write where nobody archives.
  const setpriv = Bun.which("setpriv");
  const args = [
    ...(setpriv ? [setpriv, "--pdeathsig", "INT", "--"] : []),
    o.tool.path,
    "-D",
    o.spool,
    "--no-loop",
    "--no-password",
    "--verbose",
    "--status-interval=1",
  ];
  if (o.slot) args.push("--slot", o.slot);
  if (o.synchronous) args.push("--synchronous");

  const loop = (async () => {
    let wait = min;
    while (!stopped) {
      await o
        .beforeStart?.()
        .catch((e: Error) => o.log({ level: "error", msg: "wal spool repair failed", error: e.message }));
      const started = Date.now();
      proc = Bun.spawn(args, { env, stdin: "ignore", stdout: "ignore", stderr: "pipe" });
      // Set on the process as soon as it exists (setpriv keeps its pid and nice when it execs the receiver).
      let nice = 0;
      if (o.nice)
        try {
          setPriority(proc.pid, o.nice);
          nice = o.nice;
        } catch (e) {
          o.log({
            level: "warn",
            msg: "wal receiver runs at normal priority",
            nice: o.nice,
            error: (e as Error).message,
          });
        }
      o.log({
        level: "info",
        msg: "wal receiver started",
        pid: proc.pid,
        slot: o.slot ?? null,
        synchronous: o.synchronous,
        nice,
        tool: o.tool.path,
        version: o.tool.version,
      });
      const tail: string[] = [];
      const lines = forwardLines(proc.stderr, o.log, tail, (text) => {
        const m = /^starting log streaming at ([0-9A-F]+\/[0-9A-F]+) \(timeline (\d+)\)/.exec(text);
        if (m) o.onStart?.(m[1]!, Number(m[2]));
        if (m) o.onPosition?.(m[1]!, Number(m[2]));
        const sw = /^switched to timeline (\d+) at ([0-9A-F]+\/[0-9A-F]+)/.exec(text);
        if (sw) o.onPosition?.(sw[2]!, Number(sw[1]));
      });
      const code = await proc.exited;
      await lines;
      const signal = proc.signalCode ?? null;
      proc = undefined;
      if (stopped) {
        o.log({ level: "info", msg: "wal receiver stopped", code, signal });
        break;
      }
      // A stream that ran a while and then dropped is a fresh failure, not a repeat of the last one.
      if (Date.now() - started > 60_000) wait = min;
      o.log({ level: "error", msg: "wal receiver exited; restarting", code, signal, restartInMs: wait });
      await o
        .onExit?.(tail)
        .catch((e: Error) => o.log({ level: "error", msg: "wal receiver recovery step failed", error: e.message }));
      if (o.space && (tail.some((l) => NO_SPACE.test(l)) || (await o.space.free()) < o.space.needBytes)) {
        // The padding a full disk cut short takes space of its own: gone first, it may be all that was missing.
        await o.beforeStart?.().catch(() => {});
        // After waiting out a full disk, at once; with room already, the usual backoff (a failure
        // that only looks like a full disk must not restart in a tight loop).
        if (await waitForSpace(o.space)) {
          wait = min;
          continue;
        }
      }
      await sleep(wait);
      wait = Math.min(max, wait * 2);
    }
  })();

  /**
   * Said once when it starts and once when it ends: a full disk is an outage of the archive, not a
   * retry. True when it waited for space to return, false when there was room already.
   */
  async function waitForSpace(space: NonNullable<ReceiverOptions["space"]>): Promise<boolean> {
    if ((await space.free()) >= space.needBytes) {
      o.log({
        level: "warn",
        msg: "the WAL receiver ran out of disk space; there is room again",
        dir: o.spool,
        freeBytes: await space.free(),
      });
      return false;
    }
    full = true;
    const since = Date.now();
    o.log({
      level: "error",
      msg:
        "disk full: the WAL receiver cannot write the next segment; it restarts as soon as space returns " +
        "(the slot keeps the WAL on the server meanwhile)",
      dir: o.spool,
      freeBytes: await space.free(),
      needBytes: space.needBytes,
    });
    while (!stopped && (await space.free()) < space.needBytes) await sleep(space.checkMs ?? 1000);
    full = false;
    if (!stopped)
      o.log({
        level: "info",
        msg: "disk space returned: restarting the WAL receiver",
        dir: o.spool,
        freeBytes: await space.free(),
        fullForMs: Date.now() - since,
      });
    return true;
  }

  return {
    pid: () => proc?.pid,
    diskFull: () => full,
    async stop() {
      stopped = true;
      wake?.();
      // SIGINT is pg_receivewal's own "flush and exit".
      proc?.kill("SIGINT");
      const t = setTimeout(() => proc?.kill("SIGKILL"), 10_000);
      await loop;
      clearTimeout(t);
    },
  };
}

/** pg_receivewal's stderr as log lines; "finished segment" is left to the archiver's own line. */
async function forwardLines(
  stream: ReadableStream<Uint8Array>,
  log: Log,
  tail: string[],
  onText: (text: string) => void,
) {
  let buffer = "";
  const decoder = new TextDecoder();
  const emit = (line: string) => {
    const text = line.replace(/^pg_receivewal:\s*/, "").trim();
    if (!text || /finished segment at/.test(text)) return;
    tail.push(text);
    onText(text);
    if (tail.length > 20) tail.shift();
    const level = /^(error|fatal)/i.test(text) ? "error" : /^warning/i.test(text) ? "warn" : "info";
    log({ level, msg: "pg_receivewal", detail: text });
  };
  for await (const chunk of stream) {
    buffer += decoder.decode(chunk, { stream: true });
    const parts = buffer.split("\n");
    buffer = parts.pop()!;
    parts.forEach(emit);
  }
  if (buffer) emit(buffer);
}
