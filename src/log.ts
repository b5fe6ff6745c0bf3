/** One JSON object per line: what `docker logs` shows and log shippers read. */
export type Log = (entry: Record<string, unknown>) => void;

let pending = "";
let scheduled = false;

function flush() {
  scheduled = false;
  if (pending) {
    const out = pending;
    pending = "";
    process.stdout.write(out);
  }
}

// Lines written in one turn of the event loop go out in one write: a write per request would cap
// the server's rate. Whatever is pending still goes out when the process exits.
process.on("exit", flush);

export const jsonLog: Log = (entry) => {
  pending += JSON.stringify({ time: new Date().toISOString(), ...entry }) + "\n";
  if (pending.length > 65536) flush();
  else if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
};

/**
 * The same lines on stderr, written at once: for a command whose stdout is its answer (`--json`),
 * and whose warnings must not wait for a turn of the event loop that an exit may never give.
 */
export const stderrLog: Log = (entry) => {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...entry }) + "\n");
};
