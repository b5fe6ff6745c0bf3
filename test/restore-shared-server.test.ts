import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { tmpdir } from "node:os";
import { readdir } from "node:fs/promises";
import { catalogChanged, type WatchedCatalog } from "../src/backup/restore.ts";
import { tableStats } from "../src/backup/digest.ts";
import { tableCounts } from "../src/pg/tables.ts";
import { freshDatabase, serverUrl, type TestDatabase, urlFor } from "./support/db.ts";
import { startCluster } from "./support/cluster.ts";
import { binaryPath, buildBinary, shinkei, takeBackup } from "./support/cli.ts";
import { until } from "./support/wait.ts";
import { seededDatabase, slowToLoad } from "./support/backup.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { connect } from "../src/pg/db.ts";
import postgres from "postgres";

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

  test("what another client does to other databases meanwhile is not a change; what the load role can do is", () => {
    // The load role (oid 900) owns the database restored into (16384); 16390 is another app's.
    const catalog = (databases: WatchedCatalog["databases"], settings: WatchedCatalog["settings"] = []) => ({
      role: "900",
      superuser: false,
      database: "16384",
      databases,
      settings,
    });
    const dbs: WatchedCatalog["databases"] = {
      "5": ["10", "postgres", null, -1, true, false],
      "16384": ["900", "app", null, -1, true, false],
      "16390": ["10", "other_app", null, -1, true, false],
    };
    const before = catalog(dbs);
    const without = (oid: string) => Object.fromEntries(Object.entries(dbs).filter(([o]) => o !== oid));
    const others = [
      catalog({ ...dbs, "16400": ["10", "created_meanwhile", null, -1, true, false] }),
      catalog(without("16390")),
      catalog({ ...dbs, "16390": ["10", "renamed_by_its_owner", null, -1, true, false] }),
      catalog({ ...dbs, "16390": ["10", "other_app", "{=c/postgres}", 5, true, false] }),
      catalog(dbs, [["16390", "0", "{work_mem=1MB}"]]),
      catalog(dbs, [["0", "10", "{search_path=x}"]]),
    ];
    for (const after of others) expect(catalogChanged(before, after)).toBeNull();

    const byTheLoad = [
      catalog({ ...dbs, "16384": ["900", "app_renamed", null, -1, true, false] }),
      catalog({ ...dbs, "16384": ["900", "app", null, 0, true, false] }),
      catalog({ ...dbs, "16384": ["10", "app", null, -1, true, false] }),
    ];
    for (const after of byTheLoad) expect(catalogChanged(before, after)).toBe("databases");
    expect(catalogChanged(before, catalog(dbs, [["0", "900", "{search_path=evil}"]]))).toBe("settings");
    expect(catalogChanged(before, catalog(dbs, [["16384", "0", "{search_path=evil}"]]))).toBe("settings");
    // A superuser's load could change any of them: nothing is another client's then.
    const asSuperuser = { ...before, superuser: true };
    expect(catalogChanged(asSuperuser, { ...others[2]!, superuser: true })).toBe("databases");
    expect(catalogChanged(asSuperuser, { ...others[4]!, superuser: true })).toBe("settings");

    // A drop under way elsewhere marks its row in place (connection limit -2, the same version):
    // not a change, for a superuser's load either. Written by a transaction (a new version), or
    // with no version to compare, the same value is one.
    const versions = { "5": "700", "16384": "701", "16390": "702" };
    const versioned = { ...asSuperuser, versions };
    const dropping = { ...dbs, "16390": ["10", "other_app", null, -2, true, false] as [string, ...unknown[]] };
    expect(catalogChanged(versioned, { ...versioned, databases: dropping })).toBeNull();
    expect(
      catalogChanged(versioned, { ...versioned, databases: dropping, versions: { ...versions, "16390": "9" } }),
    ).toBe("databases");
    expect(catalogChanged(asSuperuser, { ...asSuperuser, databases: dropping })).toBe("databases");
    const droppingAndRenamed = {
      ...dropping,
      "16390": ["10", "renamed", null, -2, true, false] as [string, ...unknown[]],
    };
    expect(catalogChanged(versioned, { ...versioned, databases: droppingAndRenamed })).toBeNull();
  });

  test("a database with no tables counts as empty: its backup restores, and no nameless table is counted", async () => {
    expect(await tableCounts(db.sql)).toEqual({});
    expect(await db.sql.begin((tx) => tableStats(tx))).toEqual({ counts: {}, digests: {} });
    const env = { DATABASE_URL: db.url, BACKUP_DIR: await tempDir("shared_empty") };
    const file = await takeBackup(env);
    expect((await Bun.file(`${file}.manifest.json`).json()).counts).toEqual({});
    const restored = await shinkei(
      ["backup", "restore", file, "--allow-superuser", "--yes", "--confirm-database", db.name, "--no-safety-backup"],
      env,
    );
    expect(restored).toSucceed();
    expect(restored.stdout).toContain("counts match the manifest");
    await db.sql`create table t (id int)`;
    await db.sql`insert into t values (1), (2)`;
    expect(await tableCounts(db.sql)).toEqual({ t: 2 });
  });

  test("a restore whose load runs while another client alters, creates and drops other databases commits", async () => {
    // On a server of its own: the other client's churn would fail a superuser's restore that another
    // test file runs meanwhile on the shared server (a superuser's load could have made any of it).
    const cluster = await startCluster();
    const server = cluster.url();
    const mine = await freshDatabase("shared", server);
    // The deployment's layout: the app's role (no superuser) owns its database; DATABASE_URL is the superuser's.
    const role = mine.name.replace("shinkei_test_", "app_");
    await mine.sql.unsafe(`create role ${role} login nosuperuser`);
    await mine.sql.unsafe(`alter database ${mine.name} owner to ${role}`);
    const u = new URL(urlFor(mine.name, server));
    u.username = role;
    const app = connect(u.toString(), { max: 1 });
    const other = await freshDatabase("shared_other", server);
    const admin = postgres(server, { max: 1, onnotice: () => {} });
    try {
      await migrate(app);
      await seedSample(app, "shared");
      const env = { DATABASE_URL: mine.url, BACKUP_DIR: await tempDir("shared") };
      const file = await takeBackup(env);
      await slowToLoad(file, 2);
      const restore = shinkei(
        ["backup", "restore", file, "--yes", "--confirm-database", mine.name, "--no-safety-backup"],
        env,
      );
      let done = false;
      void restore.finally(() => {
        done = true;
      });
      // Until the restore ends: another app's database changes under it, and one comes and goes.
      for (let i = 1; !done; i++) {
        await admin.unsafe(`alter database ${other.name} connection limit ${i}`);
        const passing = `${other.name}_${i}`;
        await admin.unsafe(`create database ${passing}`);
        await admin.unsafe(`drop database ${passing}`);
      }
      const r = await restore;
      expect(r).toSucceed();
      expect(r.stdout).toContain("counts match the manifest");
      const [row] = await admin.unsafe<{ n: number }[]>(
        `select datconnlimit as n from pg_database where datname = '${other.name}'`,
      );
      expect(row!.n).toBeGreaterThan(1); // it did change while the restore ran
    } finally {
      await app.end();
      await mine.sql.end({ timeout: 1 });
      await other.sql.end({ timeout: 1 });
      await admin.end();
      await cluster.stop();
    }
  });

  test("a superuser's restore commits while another client drops databases that were there when it began", async () => {
    // DROP DATABASE marks the row in place for as long as it takes (PostgreSQL 15.4 and later): a
    // check before COMMIT that read one such row rolled the restore back. On a server of its own,
    // for the same reason as the test above.
    const cluster = await startCluster();
    const server = cluster.url();
    const mine = await seededDatabase("shared_dropping", "dropping", server);
    const admin = postgres(server, { max: 1, onnotice: () => {} });
    try {
      const doomed: string[] = [];
      for (let i = 0; i < 24; i++) {
        doomed.push(`${mine.name}_doomed_${i}`);
        await admin.unsafe(`create database ${doomed[i]}`);
      }
      const env = { DATABASE_URL: mine.url, BACKUP_DIR: await tempDir("shared_dropping") };
      const file = await takeBackup(env);
      await slowToLoad(file, 1);
      const restore = shinkei(
        [
          "backup",
          "restore",
          file,
          "--allow-superuser",
          "--yes",
          "--confirm-database",
          mine.name,
          "--no-safety-backup",
        ],
        env,
      );
      let done = false;
      void restore.finally(() => {
        done = true;
      });
      // One drop after another until the restore ends: nearly always one under way at its check.
      let dropped = 0;
      while (!done && dropped < doomed.length) await admin.unsafe(`drop database ${doomed[dropped++]}`);
      const r = await restore;
      expect(r).toSucceed();
      expect(r.stdout).toContain("counts match the manifest");
      expect(dropped).toBeGreaterThan(3); // drops did run while it loaded
    } finally {
      await mine.sql.end({ timeout: 1 });
      await admin.end();
      await cluster.stop();
    }
  });

  test("a restore killed mid-statement lets go of the database in seconds; the next removes its spool", async () => {
    const live = await seededDatabase("shared_killed");
    const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
    try {
      const env = { DATABASE_URL: live.url, BACKUP_DIR: await tempDir("shared_killed") };
      const good = await takeBackup(env);
      const file = await takeBackup(env);
      await slowToLoad(file, 60);
      await buildBinary();
      const args = ["backup", "restore", file, "--allow-superuser", "--yes", "--confirm-database", live.name];
      const p = Bun.spawn([binaryPath, ...args, "--no-safety-backup"], {
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          HOME: process.env.HOME ?? "/tmp",
          NO_COLOR: "1",
          TMPDIR: tmpdir(),
          ...env,
        },
        stdout: "ignore",
        stderr: "ignore",
      });
      const sleeping = () =>
        admin.unsafe(
          `select pid from pg_stat_activity where datname = '${live.name}' and query like '%pg_sleep(60)%'` +
            " and pid <> pg_backend_pid()",
        );
      await until("the load to reach its slow statement", async () => (await sleeping()).length > 0, 30_000);
      p.kill("SIGKILL");
      await p.exited;
      // Its statement had a minute to go: the server ended it because the client was gone.
      await until("the server to end the dead restore's session", async () => (await sleeping()).length === 0, 15_000);
      const [left] = await live.sql`select count(*)::int as n from pg_class where relname = 'slow_to_load'`;
      expect(left!.n).toBe(0);
      // The killed restore's spool (the whole decoded file) is left in BACKUP_DIR; the next restore
      // removes it, as its process is gone, and leaves none of its own.
      const spools = async () => (await readdir(env.BACKUP_DIR)).filter((n) => n.startsWith(".shinkei-restore-"));
      expect(await spools()).toHaveLength(1);
      const next = await shinkei([...args.slice(0, 2), good, ...args.slice(3), "--no-safety-backup"], env);
      expect(next).toSucceed();
      expect(await spools()).toEqual([]);
    } finally {
      await admin.end();
      await live.drop();
    }
  });
});
