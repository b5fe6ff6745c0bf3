import { expect } from "bun:test";
import { chmod, rm } from "node:fs/promises";
import { join } from "node:path";
import { startCluster, type TestCluster } from "./cluster.ts";
import { tempDir } from "./fixtures.ts";
import { receiverFlushed, startBackupService, streamingEnv } from "./wal.ts";
import { shinkei } from "./cli.ts";
import type { Service } from "./process.ts";
import { TestS3 } from "./s3.ts";
import { connect, type Sql } from "../../src/pg/db.ts";
import { writeIdentity } from "../../src/storage/crypt.ts";
import { tableStats, type TableStats } from "../../src/backup/digest.ts";

/**
 * A live database with damage to recover from, for the point-in-time recovery tests (each test file
 * makes its own: files run in processes of their own). The backup service streams its WAL into an
 * encrypted archive copied to S3; after a base backup come writes, a noted moment, then the damage
 * (half the notes deleted, the ledger dropped, one note written after).
 */
export type DamagedArchive = {
  cluster: TestCluster;
  sql: Sql;
  s3: TestS3;
  service: Service;
  dir: string;
  /** The age identity that opens the archive; the service runs without it. */
  key: string;
  /** Where scratch instances go (TMPDIR of every shinkei run here): empty after every test. */
  scratchRoot: string;
  env: Record<string, string>;
  /** The moment between the writes and the damage, its LSN, and the state the database had then. */
  noted: string;
  notedLsn: string;
  before: TableStats;
  /** Stop and remove everything; what failed to start is skipped. */
  stop(): Promise<void>;
};

export const insertLsnOf = async (sql: Sql) =>
  (await sql<{ lsn: string }[]>`select pg_current_wal_insert_lsn()::text as lsn`)[0]!.lsn;

export async function damagedArchive(): Promise<DamagedArchive> {
  const a: Partial<DamagedArchive> = {};
  const stop = async () => {
    a.service?.proc.kill("SIGKILL");
    await a.sql?.end({ timeout: 1 });
    await a.cluster?.stop();
    await a.s3?.stop();
    if (a.scratchRoot) await rm(a.scratchRoot, { recursive: true, force: true });
  };
  try {
    // PostgreSQL's 16 MiB segments: the tests recover from the segment still being received, which
    // with the test clusters' 1 MiB ones is sealed by the time the later tests run.
    const cluster = (a.cluster = await startCluster({ walSegmentMiB: 16 }));
    a.s3 = await TestS3.start();
    a.dir = await tempDir("pitr-restore");
    a.scratchRoot = await tempDir("pitr-scratch");
    // Like /tmp: the server's OS user must be able to reach its folder inside.
    await chmod(a.scratchRoot, 0o755);
    a.key = join(await tempDir("pitr-key"), "k");
    const recipient = await writeIdentity(a.key);
    const env = (a.env = streamingEnv(cluster.url("shinkei"), a.dir, {
      BACKUP_AGE_RECIPIENTS: recipient,
      BACKUP_AGE_IDENTITY: a.key,
      WAL_PARTIAL_UPLOAD_INTERVAL: "1s",
      TMPDIR: a.scratchRoot,
      ...a.s3.env("pitr/"),
    }));
    a.service = await startBackupService({ ...env, BACKUP_AGE_IDENTITY: "" });
    const sql = (a.sql = connect(cluster.url("shinkei"), { max: 2 }));
    expect(await shinkei(["backup", "base"], env)).toSucceed();

    await sql`create table notes (id serial primary key, body text not null)`;
    await sql`create table ledger (id serial primary key, amount int not null)`;
    await sql`insert into notes (body) select 'note ' || i from generate_series(1, 50) i`;
    await sql`insert into ledger (amount) select i * 7 from generate_series(1, 20) i`;
    a.before = await sql.begin((tx) => tableStats(tx));
    // Commit timestamps have microseconds; the noted time lies strictly between the writes and the damage.
    await Bun.sleep(300);
    a.noted = (
      await sql<
        { t: string }[]
      >`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`
    )[0]!.t;
    a.notedLsn = await insertLsnOf(sql);
    await Bun.sleep(300);
    await sql`delete from notes where id % 2 = 0`;
    await sql`drop table ledger`;
    await sql`insert into notes (body) values ('written after the damage')`;
    await receiverFlushed(sql, await insertLsnOf(sql));
    return { ...(a as DamagedArchive), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** The counts and content digests of the database at `url`. */
export async function statsOf(url: string): Promise<TableStats> {
  const r = connect(url, { max: 1 });
  try {
    return await r.begin((tx) => tableStats(tx));
  } finally {
    await r.end({ timeout: 1 });
  }
}
