import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { freshDatabase, snapshot, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { shinkei } from "./support/cli.ts";
import { copyBackup } from "./support/backup.ts";
import { tempDir } from "./support/fixtures.ts";
import { deleteWorld, digest, recordOf, startingState } from "./support/recover.ts";

/*
 * Sequences of documented operations across verbs (recover, backup restore, reset, recover --history,
 * recover --undo), each used as the README says: what one of them promises must still hold after the others.
 */

setDefaultTimeout(120_000);

let db: TestDatabase;
let env: Record<string, string>;
/* A server of this file's own, as recover-undo.test.ts: a scratch load refuses to commit when pg_database changes. */
let server: TestCluster;
let serverUrl: string;
let template: string;
let startBackup: string;

const backupOfTheStart = () => copyBackup(startBackup, env.BACKUP_DIR!, db.name);
const recoverAlice = () =>
  shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
const undo = (record: string) => shinkei(["recover", "--undo", record, "--yes", "--confirm-database", db.name], env);

beforeAll(async () => {
  server = await startCluster();
  serverUrl = server.url();
  ({ template, backup: startBackup } = await startingState(serverUrl));
});
afterAll(() => server.stop());
beforeEach(async () => {
  db = await freshDatabase("scen", serverUrl, template);
  env = { DATABASE_URL: db.url, BACKUP_DIR: await tempDir("scen") };
});
afterEach(() => db.drop());

describe("sequences across verbs", () => {
  test("recover, restore an older backup in error, then its pre-restore copy: the recovery still undoes", async () => {
    const older = await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 2");
    const lost = await digest(db.sql, "alice@example.com");
    const r = await recoverAlice();
    expect(r).toSucceed();
    const record = recordOf(r.stdout);
    const recovered = await snapshot(db.sql);

    // The wrong file restored: the README's restore step 5, "so this step can itself be undone".
    const wrong = await shinkei(
      ["backup", "restore", older, "--yes", "--confirm-database", db.name, "--allow-superuser"],
      env,
    );
    expect(wrong).toSucceed();
    const undoRestore = /^undo with\s+shinkei (.+)$/m.exec(wrong.stdout)![1]!.split(" ");
    const back = await shinkei(undoRestore, env);
    expect(back).toSucceed();
    // Every row as it was right after the recovery, its recoveries row included: --history says applied.
    expect(await snapshot(db.sql)).toEqual(recovered);
    expect((await shinkei(["recover", "--history"], env)).stdout).toMatch(/ applied\n/);

    // "recover --undo RECORD: undoes one recovery ... exactly the rows it changed go back".
    const u = await undo(record);
    expect(u.stderr).toBe("");
    expect(u).toSucceed();
    expect(await digest(db.sql, "alice@example.com")).toEqual(lost);
  });

  test("one BACKUP_DIR for two databases: --history of one does not list the other database's recoveries", async () => {
    const other = await freshDatabase("scen_other", serverUrl, template);
    try {
      const otherEnv = { ...env, DATABASE_URL: other.url };
      await copyBackup(startBackup, env.BACKUP_DIR!, other.name);
      await deleteWorld(other.sql, "alice@example.com", "alice@example.com world 2");
      const r = await shinkei(
        ["recover", "--user", "alice@example.com", "--yes", "--confirm-database", other.name],
        otherEnv,
      );
      expect(r).toSucceed();
      const id = (JSON.parse(await readFile(recordOf(r.stdout), "utf8")).id as string).slice(0, 8);
      // Where it was applied, it is listed as applied.
      expect((await shinkei(["recover", "--history"], otherEnv)).stdout).toMatch(new RegExp(`^${id} .* applied$`, "m"));
      // This database never had a recovery: none of the other's is listed here, let alone as "not applied".
      const h = await shinkei(["recover", "--history"], env);
      expect(h).toSucceed();
      expect(h.stdout).not.toContain(id);
      expect(h.stdout).toContain("no recoveries recorded");
      const j = JSON.parse((await shinkei(["recover", "--history", "--json"], env)).stdout);
      expect(j).toEqual([]);
    } finally {
      await other.drop();
    }
  });

  test("reset between a recovery and its undo: the undo says the reset may have removed its record", async () => {
    await backupOfTheStart();
    await deleteWorld(db.sql, "alice@example.com", "alice@example.com world 2");
    const r = await recoverAlice();
    expect(r).toSucceed();
    expect(await shinkei(["reset", "--force", "--confirm-database", db.name], env)).toSucceed();
    const u = await undo(recordOf(r.stdout));
    expect(u.code).toBe(1);
    // It was applied, and committed, to this very database; the reset emptied its recoveries table.
    expect(u.stderr).toContain("is not recorded in this database");
    expect(u.stderr).toContain("or the database was reset or restored to a state before it since");
  });
});
