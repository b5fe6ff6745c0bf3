import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { databaseChanged } from "../src/backup/restore.ts";
import { tableStats } from "../src/backup/digest.ts";
import { tableCounts } from "../src/pg/tables.ts";
import { freshDatabase, type TestDatabase } from "./support/db.ts";

/*
 * A restore shares its server with other databases and other clients: what they do meanwhile is
 * not the restored file's doing, and must neither fail the restore nor be reported as a change.
 */
describe("a restore on a shared server", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await freshDatabase("shared");
  });
  afterAll(async () => {
    await db.drop();
  });

  test("a database another client creates or drops during the load is not a change; one altered is", () => {
    const before = JSON.stringify({ "1": "template1/10//-1/true/true", "5": "postgres/10//-1/true/false" });
    const created = JSON.stringify({ ...JSON.parse(before), "16400": "other_app/10//-1/true/false" });
    const dropped = JSON.stringify({ "1": "template1/10//-1/true/true" });
    expect(databaseChanged(before, created)).toBe(false);
    expect(databaseChanged(before, dropped)).toBe(false);
    expect(databaseChanged(before, before)).toBe(false);
    const renamed = JSON.stringify({ ...JSON.parse(before), "5": "postgres_old/10//-1/true/false" });
    const reowned = JSON.stringify({ ...JSON.parse(before), "5": "postgres/16384//-1/true/false" });
    const opened = JSON.stringify({ ...JSON.parse(before), "1": "template1/10//-1/true/false" });
    for (const after of [renamed, reowned, opened]) expect(databaseChanged(before, after)).toBe(true);
  });

  test("a database with no tables counts as empty: no nameless table (a rollback there changed nothing)", async () => {
    expect(await tableCounts(db.sql)).toEqual({});
    expect(await db.sql.begin((tx) => tableStats(tx))).toEqual({ counts: {}, digests: {} });
    await db.sql`create table t (id int)`;
    await db.sql`insert into t values (1), (2)`;
    expect(await tableCounts(db.sql)).toEqual({ t: 2 });
  });
});
