import type { Log } from "../log.ts";

/**
 * POST an event to the webhook, if one is configured. Never awaited by a backup and never
 * throws: a slow or broken receiver must not delay or fail the backup it reports on.
 */
export function notify(url: string | undefined, event: Record<string, unknown>, log: Log): void {
  if (!url) return;
  fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ source: "shinkei", time: new Date().toISOString(), ...event }),
    signal: AbortSignal.timeout(5000),
  })
    .then((r) => {
      if (!r.ok) log({ level: "warn", msg: "webhook answered with an error", status: r.status });
    })
    .catch((e) => log({ level: "warn", msg: "webhook failed", error: (e as Error).message }));
}
