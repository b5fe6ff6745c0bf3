/** One JSON object per line: what `docker logs` shows and log shippers read. */
export type Log = (entry: Record<string, unknown>) => void;

export const jsonLog: Log = (entry) => {
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), ...entry }) + "\n");
};
