import postgres from "postgres";
import { ShinkeiError } from "../errors.ts";
import type { LockHandle, Sql } from "./db.ts";

/** What PostgreSQL says of a transaction, or "unknown" when it cannot say (yet). */
export type TransactionStatus = "committed" | "aborted" | "unknown";

/**
 * Whether transaction `xid` (its txid_current()) committed, in PostgreSQL's own word
 * (txid_status): asked on a new connection, since the one whose COMMIT got no answer is gone or
 * cannot be trusted. "in progress" is asked again for up to `waitMs`: its backend may still be
 * writing the commit (or waiting for a synchronous standby) when the client lost it. "unknown":
 * still in progress after that, too old for PostgreSQL to remember, or the server not answering.
 */
export async function transactionStatus(
  sql: Sql,
  xid: string,
  options: { waitMs?: number } = {},
): Promise<{ status: TransactionStatus; reason?: string }> {
  const conn = postgres({
    ...(sql.options as unknown as postgres.Options<{}>),
    max: 1,
    idle_timeout: 0,
    max_lifetime: null,
    connect_timeout: 5,
    // No type lookup on connect: a connection ended during it would leave a rejection nobody awaits.
    fetch_types: false,
    onnotice: () => {},
  });
  const waitMs = options.waitMs ?? 5_000;
  const deadline = Date.now() + waitMs;
  const ask = async (): Promise<{ status: TransactionStatus; reason?: string }> => {
    for (;;) {
      const [row] = await conn<{ status: string | null }[]>`
        select pg_catalog.txid_status(${xid}::text::int8)::text as status`;
      const status = row?.status ?? null;
      if (status === "committed" || status === "aborted") return { status };
      if (status === null) return { status: "unknown", reason: "PostgreSQL no longer remembers that transaction" };
      if (Date.now() >= deadline) return { status: "unknown", reason: "PostgreSQL says it is still in progress" };
      await Bun.sleep(100);
    }
  };
  // postgres.js queues a query while it reconnects, for as long as connections fail: bounded here.
  let timer: Timer | undefined;
  const unanswered = new Promise<{ status: TransactionStatus; reason: string }>((resolve) => {
    timer = setTimeout(
      () => resolve({ status: "unknown", reason: "PostgreSQL could not be asked (no answer)" }),
      waitMs + 5_000,
    );
  });
  try {
    const asked = ask();
    asked.catch(() => {}); // raced below; once the race is over, nobody awaits it
    return await Promise.race([asked, unanswered]);
  } catch (e) {
    return { status: "unknown", reason: `PostgreSQL could not be asked (${(e as Error).message})` };
  } finally {
    clearTimeout(timer);
    await conn.end({ timeout: 1 }).catch(() => {});
  }
}

/**
 * Run `fn` in ONE transaction on `sql`, committed only while `lock` (when given) is still held:
 * checked in the transaction, right before COMMIT. What an error from here means is known, so a
 * caller can say "nothing was changed" only when it is so:
 * - from `fn` or the lock check: no COMMIT was sent, and PostgreSQL never commits without one
 *   (postgres.js rolls back; a lost connection aborts the transaction);
 * - during COMMIT itself (the connection lost under it, say), PostgreSQL is asked on a new
 *   connection (transactionStatus): committed, and `fn`'s value is returned, as if the answer had
 *   come; aborted, and COMMIT's error is thrown; unknown, and COMMIT_UNKNOWN is, naming the
 *   transaction to ask about later.
 * So every error this throws, except COMMIT_UNKNOWN, means nothing of the transaction was committed.
 */
export async function checkedCommit<T>(
  sql: Sql,
  fn: (tx: postgres.TransactionSql) => Promise<T>,
  options: { what: string; lock?: LockHandle; waitMs?: number },
): Promise<T> {
  let xid: string | undefined;
  let committing = false;
  let value: T | undefined;
  try {
    return (await sql.begin(async (tx) => {
      // An xid now (txid_current assigns one): the name to ask PostgreSQL about, should COMMIT go unanswered.
      const [row] = await tx<{ xid: string }[]>`select pg_catalog.txid_current()::text as xid`;
      xid = row!.xid;
      const result = await fn(tx);
      await options.lock?.assertHeld(tx);
      committing = true;
      value = result;
      return result;
    })) as T;
  } catch (error) {
    if (!committing || xid === undefined) throw error;
    const { status, reason } = await transactionStatus(sql, xid, options);
    if (status === "committed") return value as T;
    if (status === "aborted") throw error;
    throw new ShinkeiError(
      "COMMIT_UNKNOWN",
      `whether the ${options.what} committed is unknown: its COMMIT failed ` +
        `(${(error as Error)?.message ?? String(error)}), and ${reason}`,
      {
        hint: `Once the server answers, select pg_catalog.txid_status(${xid}) says committed or aborted.`,
        details: { xid },
        cause: error,
      },
    );
  }
}
