import postgres from "postgres";
import type { Socket } from "bun";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { freshDatabase, type TestDatabase } from "./support/db.ts";
import { connect, withAdvisoryLock } from "../src/pg/db.ts";
import { checkedCommit, transactionStatus } from "../src/pg/transaction.ts";
import { ShinkeiError } from "../src/errors.ts";

let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase("commit");
  await db.sql`create table t (id int primary key)`;
});
beforeEach(async () => {
  await db.sql`truncate t`;
});
afterAll(() => db.drop());

const xidOf = async (q: postgres.TransactionSql) => (await q<{ x: string }[]>`select txid_current()::text as x`)[0]!.x;
const rows = async () => (await db.sql<{ id: number }[]>`select id from t order by id`).map((r) => r.id);

/**
 * A TCP relay to the test server that can lose a connection the way a network does during COMMIT:
 * the COMMIT goes through to the server, and the client's side is closed before any answer comes
 * back. With `refuse`, connections made after that are closed at once (the server out of reach).
 */
function relay(target: string) {
  const url = new URL(target);
  const state = { cutAtCommit: false, refuse: false };
  type Side = { up?: Socket; pending: Uint8Array[] };
  const server = Bun.listen<Side>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      async open(client) {
        client.data = { pending: [] };
        if (state.refuse) return void client.end();
        const up = await Bun.connect({
          hostname: url.hostname,
          port: Number(url.port || 5432),
          socket: {
            data: (_up, chunk) => void client.write(chunk),
            close: () => void client.end(),
            error: () => void client.end(),
          },
        });
        client.data.up = up;
        for (const chunk of client.data.pending) up.write(chunk);
      },
      data(client, chunk) {
        const up = client.data.up;
        if (!up) return void client.data.pending.push(chunk);
        up.write(chunk);
        if (state.cutAtCommit && chunk.includes("commit")) {
          state.cutAtCommit = false;
          client.end();
        }
      },
      close: (client) => void client.data.up?.end(),
    },
  });
  const through = new URL(target);
  through.hostname = "127.0.0.1";
  through.port = String(server.port);
  return { url: through.toString(), state, stop: () => server.stop(true) };
}

describe("transactionStatus: what PostgreSQL says of a transaction, asked on a new connection", () => {
  test("committed, rolled back, and one still open (unknown until it ends)", async () => {
    const committed = await db.sql.begin(async (tx) => {
      await tx`insert into t values (1)`;
      return xidOf(tx);
    });
    expect(await transactionStatus(db.sql, committed)).toEqual({ status: "committed" });

    let rolledBack = "";
    await db.sql
      .begin(async (tx) => {
        await tx`insert into t values (2)`;
        rolledBack = await xidOf(tx);
        throw new Error("roll back");
      })
      .catch(() => {});
    expect(await transactionStatus(db.sql, rolledBack)).toEqual({ status: "aborted" });

    const other = postgres(db.url, { max: 1, onnotice: () => {} });
    try {
      const open = await other.reserve();
      await open`begin`;
      await open`insert into t values (3)`;
      const xid = (await open<{ x: string }[]>`select txid_current()::text as x`)[0]!.x;
      const status = await transactionStatus(db.sql, xid, { waitMs: 300 });
      expect(status.status).toBe("unknown");
      expect(status.reason).toContain("still in progress");
      await open`commit`;
      open.release();
      expect(await transactionStatus(db.sql, xid)).toEqual({ status: "committed" });
    } finally {
      await other.end();
    }
    expect(await rows()).toEqual([1, 3]);
  });
});

describe("checkedCommit", () => {
  test("an error inside the transaction, or one COMMIT answers: thrown as is, nothing committed", async () => {
    const inside = await checkedCommit(
      db.sql,
      async (tx) => {
        await tx`insert into t values (1)`;
        throw new Error("inside");
      },
      { what: "test" },
    ).catch((e) => e);
    expect(inside.message).toBe("inside");
    // A deferred check fails at COMMIT: PostgreSQL answers it with an error and the transaction is aborted.
    await db.sql.unsafe(`create or replace function fail_at_commit() returns trigger language plpgsql as
        $$ begin raise exception 'refused at commit'; end $$`);
    const atCommit = await checkedCommit(
      db.sql,
      async (tx) => {
        await tx`insert into t values (2)`;
        await tx.unsafe(`create constraint trigger fail after insert on t deferrable initially deferred
          for each row execute function fail_at_commit()`);
        await tx`insert into t values (3)`;
      },
      { what: "test" },
    ).catch((e) => e);
    expect(atCommit).not.toBeInstanceOf(ShinkeiError);
    expect(atCommit.message).toContain("refused at commit");
    expect(await rows()).toEqual([]);
  });

  test("the connection lost during COMMIT: PostgreSQL is asked, and a commit that took effect is success", async () => {
    const r = relay(db.url);
    const sql = connect(r.url, { max: 1 });
    try {
      const value = await checkedCommit(
        sql,
        async (tx) => {
          await tx`insert into t values (1)`;
          r.state.cutAtCommit = true;
          return "done";
        },
        { what: "test" },
      );
      expect(value).toBe("done");
      expect(await rows()).toEqual([1]);
    } finally {
      await sql.end({ timeout: 1 }).catch(() => {});
      r.stop();
    }
  });

  test("the connection lost during COMMIT and the server out of reach: COMMIT_UNKNOWN, naming the xid", async () => {
    const r = relay(db.url);
    const sql = connect(r.url, { max: 1 });
    try {
      const error = await checkedCommit(
        sql,
        async (tx) => {
          await tx`insert into t values (1)`;
          r.state.cutAtCommit = true;
          r.state.refuse = true;
        },
        { what: "test", waitMs: 500 },
      ).catch((e) => e);
      expect(error).toBeInstanceOf(ShinkeiError);
      expect(error.code).toBe("COMMIT_UNKNOWN");
      expect(error.message).toContain("whether the test committed is unknown");
      // What the hint says to ask is PostgreSQL's answer once it can be asked: here, committed.
      const xid = error.details.xid as string;
      expect(error.hint).toContain(`txid_status(${xid})`);
      expect(await transactionStatus(db.sql, xid)).toEqual({ status: "committed" });
    } finally {
      await sql.end({ timeout: 1 }).catch(() => {});
      r.stop();
    }
  });

  test("commits only while the lock is held: a lock lost before COMMIT rolls the transaction back", async () => {
    const error = await withAdvisoryLock(
      db.sql,
      "maintenance",
      async (lock) => {
        await db.sql`select pg_terminate_backend(pid) from pg_stat_activity
          where datname = ${db.name} and application_name like 'shinkei a test%'`;
        return checkedCommit(db.sql, (tx) => tx`insert into t values (1)`.then(() => {}), { what: "test", lock });
      },
      { what: "a test" },
    ).catch((e) => e);
    expect(error).toBeInstanceOf(ShinkeiError);
    expect(error.code).toBe("LOCK_LOST");
    expect(await rows()).toEqual([]);
  });
});
