import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { chmod, readdir, readFile, statfs, writeFile } from "node:fs/promises";
import { constants, createZstdCompress } from "node:zlib";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createWriteStream } from "node:fs";
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import postgres from "postgres";
import { freshDatabase, urlFor, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { canMountTmpfs, mountTmpfs, seedSample, tempDir } from "./support/fixtures.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { migrations } from "../src/migrations/index.ts";
import { connect } from "../src/pg/db.ts";
import { shinkei, takeBackup as takeBackupWith } from "./support/cli.ts";
import { backupFolder, slowToLoad, stockDump } from "./support/backup.ts";
import { pathWith, wrapTool } from "./support/fixtures.ts";
import { Service } from "./support/process.ts";
import { TestS3 } from "./support/s3.ts";
import { tableStats } from "../src/backup/digest.ts";
import { writeIdentity } from "../src/storage/crypt.ts";

let db: TestDatabase;
let dir: string;
let env: Record<string, string>;
const confirm = () => ["--yes", "--confirm-database", db.name];
const stats = () => db.sql.begin((tx) => tableStats(tx));
const takeBackup = (extra: Record<string, string> = {}) => takeBackupWith({ ...env, ...extra });
// This file's database belongs to the superuser (as every test database): its restores say they
// accept that. How a restore keeps the file's code from a superuser's rights is tested at the end,
// on a database the app's own role owns.
const restore = (args: string[], extra: Record<string, string> = {}) =>
  shinkei(["backup", "--restore", ...args, "--allow-superuser"], { ...env, ...extra });

const dump = (file: string) => stockDump(db.url, file, ["--no-owner"]);

/**
 * A stock plain dump of the seeded database, taken once in beforeAll: the files below that append
 * an ending the judge refuses never send any of it, so a pg_dump per test would only cost CPU.
 */
let seededDump: string;

/** A stock plain dump of the seeded database with `tail` appended: a real file, with a planted ending. */
async function plantedDump(name: string, tail: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, seededDump + tail);
  return file;
}

/*
 * A server of this file's own: a restore refuses to commit when any database's row in pg_database
 * changed during its load, and test files running beside this one (bun test --parallel) create and
 * drop databases on the shared server all the time; the temporary roles counted here are the
 * whole server's too.
 */
let server: TestCluster;
let serverUrl: string;

beforeAll(async () => {
  server = await startCluster();
  serverUrl = server.url();
  db = await freshDatabase("untrusted", serverUrl);
  await migrate(db.sql);
  await seedSample(db.sql, "u");
  const file = join(await tempDir("untrusted-seeded"), "seeded.sql");
  await dump(file);
  seededDump = await readFile(file, "utf8");
});
beforeEach(async () => {
  ({ dir, env } = await backupFolder(db, "untrusted"));
});
afterAll(async () => {
  await db.drop();
  await server.stop();
});

describe("a restore is all-or-nothing for any file", () => {
  test("a file with its own COMMIT changes nothing, and says so only after checking", async () => {
    await db.sql`insert into worlds (owner_id, name) select id, 'after the dump' from users limit 1`;
    const file = join(dir, "planted.sql");
    // pg_dump's closing line is there too, as anyone can write it: only the content can tell.
    await writeFile(
      file,
      "CREATE TABLE planted (x int); COMMIT; SELECT 1/0;\n--\n-- PostgreSQL database dump complete\n--\n",
    );
    const before = await stats();
    const r = await restore(["--backup-file", file, ...confirm()]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("transaction control");
    expect(r.stderr).toContain(
      "Checked: every table's row count and content digest are as they were before the restore",
    );
    expect(await stats()).toEqual(before);
    const [planted] = await db.sql`select to_regclass('public.planted') as t`;
    expect(planted!.t).toBeNull();
  });

  test.each([["END;"], ["ROLLBACK;"], ["BEGIN; DROP TABLE users;"], ["START TRANSACTION;"], ["commit /* hidden */ ;"]])(
    "a dump ending in %j is refused whole",
    async (tail) => {
      const file = await plantedDump("tail.sql", `\n${tail}\nSELECT 1/0;\n`);
      const before = await stats();
      const r = await restore(["--backup-file", file, ...confirm()]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(
        /the file contains (transaction control|"DROP TABLE users;" inside a large-object block)/,
      );
      expect(await stats()).toEqual(before);
    },
  );

  test("a backup holding a large object and another schema restores completely, or not at all", async () => {
    await db.sql`create schema archive`;
    await db.sql`create table archive.notes (id int primary key, body text)`;
    await db.sql`insert into archive.notes values (1, 'kept in another schema')`;
    const [lo] = await db.sql`select lo_from_bytea(0, 'a large object') as oid`;
    const file = await takeBackup();
    const manifest = JSON.parse(await readFile(`${file}.manifest.json`, "utf8"));
    expect(manifest.counts).toMatchObject({ "archive.notes": 1, "(large objects)": 1 });
    expect(manifest.digests["archive.notes"]).toBeDefined();
    const good = await stats();

    // A copy of the same dump that fails at its very end: pg_dump's own BEGIN/COMMIT around the
    // large object must not commit what came before.
    const broken = join(dir, "broken.sql");
    await writeFile(
      broken,
      new TextDecoder().decode(Bun.zstdDecompressSync(await readFile(file))) +
        "\nSELECT pg_catalog.setval('public.no_such_seq', 1, false);\n",
    );

    await db.sql`drop schema archive cascade`;
    await db.sql`select lo_unlink(${lo!.oid})`;
    await db.sql`delete from story_beats where position = 0`;
    const changed = await stats();

    const failed = await restore(["--backup-file", broken, ...confirm(), "--no-safety-backup"]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('no_such_seq" does not exist');
    expect(await stats()).toEqual(changed);

    const ok = await restore(["--backup-file", file, ...confirm()]);
    expect(ok.stderr).toBe("");
    expect(ok).toSucceed();
    expect(await stats()).toEqual(good);
    const [back] = await db.sql`select convert_from(lo_get(${lo!.oid}), 'UTF8') as body`;
    expect(back!.body).toBe("a large object");
    const [note] = await db.sql`select body from archive.notes where id = 1`;
    expect(note!.body).toBe("kept in another schema");

    // Without a safety backup the file is read once (checksum, judge and spool in one pass): the
    // same result, every row, the object and the other schema, and no spool left behind.
    await db.sql`delete from story_beats where position = 0`;
    await db.sql`update archive.notes set body = 'changed'`;
    const once = await restore(["--backup-file", file, ...confirm(), "--no-safety-backup"]);
    expect(once.stderr).toBe("");
    expect(once).toSucceed();
    expect(await stats()).toEqual(good);
    const [again] = await db.sql`select convert_from(lo_get(${lo!.oid}), 'UTF8') as body`;
    expect(again!.body).toBe("a large object");
    expect((await readdir(dir)).filter((n) => n.startsWith(".shinkei-restore-"))).toEqual([]);
    await db.sql`drop schema archive cascade`;
    await db.sql`select lo_unlink(${lo!.oid})`;
  });
});

describe("a restored file is untrusted input", () => {
  test.each([
    ["\\! touch MARK", "meta-command"],
    ["\\o MARK", "meta-command"],
    ["\\copy (select 1) to program 'touch MARK'", "meta-command"],
    ["SELECT 1 \\g MARK", "meta-command"],
    ["\\set ON_ERROR_STOP off\nSELECT 1/0;\n\\! touch MARK", "meta-command"],
    ["\\connect postgres\n\\! touch MARK", "meta-command"],
  ])("%j runs nothing on this machine and changes nothing", async (line, why) => {
    const mark = join(dir, "mark");
    const file = await plantedDump("meta.sql", `\n${line.replaceAll("MARK", mark)}\n`);
    const before = await stats();
    const r = await restore(["--backup-file", file, ...confirm()]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(why);
    expect(existsSync(mark)).toBe(false);
    expect(await stats()).toEqual(before);
  });

  test("pg_restore and pg_dump get no S3 keys, age passphrases or identities", async () => {
    const seen = join(dir, "tool-env");
    const spy = await wrapTool("pg_restore", `env >> '${seen}'\nexec "$REAL" "$@"`);
    await writeFile(join(spy, "pg_dump"), `#!/bin/sh\nenv >> '${seen}'\nexec ${Bun.which("pg_dump")} "$@"\n`, {
      mode: 0o755,
    });
    const file = join(dir, "custom.dump");
    await stockDump(db.url, file, ["--no-owner", "--format=custom"]);
    const secrets = {
      AWS_SECRET_ACCESS_KEY: "s3-secret-value",
      BACKUP_AGE_PASSPHRASE: "age-secret-value",
      SMTP_URL: "smtp://u:mail-secret@127.0.0.1",
    };
    const r = await restore(["--backup-file", file, ...confirm(), "--allow-unencrypted"], {
      ...secrets,
      PATH: pathWith(spy),
    });
    expect(r.stderr).not.toContain("✖");
    expect(r).toSucceed();
    const childEnv = await readFile(seen, "utf8");
    // pg_dump (the safety backup and its version check) and pg_restore (verify and load) all ran.
    expect(childEnv.match(/^PGDATABASE=/gm)?.length).toBeGreaterThanOrEqual(2);
    for (const value of Object.values(secrets)) expect(childEnv).not.toContain(value);
  });
});

const canMount = await canMountTmpfs();

describe("a file that decodes to more than the disk beside the backups holds", () => {
  test.skipIf(!canMount)(
    "is refused before its spool fills BACKUP_DIR: free space stays, the error says why, nothing changed",
    async () => {
      const home = await tempDir("spool-full");
      // Small, so that what it takes to fill it (decoded, spooled, judged) costs little CPU.
      expect(await mountTmpfs(home, "64m")).toBe(true);
      try {
        // 80 MiB of COPY rows in a file of a few KB (the spool holds the decoded file).
        const file = join(dir, "decodes-far.sql.zst");
        const row = `1\t${"x".repeat(1020)}\n`.repeat(1024);
        async function* plain() {
          yield "CREATE TABLE public.far (id int, s text);\nCOPY public.far (id, s) FROM stdin;\n";
          for (let i = 0; i < 80; i++) yield row;
          yield "\\.\n-- PostgreSQL database dump complete\n";
        }
        await pipeline(
          Readable.from(plain()),
          createZstdCompress({ params: { [constants.ZSTD_c_compressionLevel]: 3 } }),
          createWriteStream(file),
        );
        const before = await stats();
        let minFree = Number.POSITIVE_INFINITY;
        let watching = true;
        const watch = (async () => {
          while (watching) {
            const fs = await statfs(home);
            minFree = Math.min(minFree, fs.bavail * fs.bsize);
            await Bun.sleep(2);
          }
        })();
        const r = await restore(["--backup-file", file, ...confirm(), "--no-safety-backup"], { BACKUP_DIR: home });
        watching = false;
        await watch;
        expect(r.code).toBe(1);
        expect(r.stderr).toContain("the file decodes to more than the free space beside the backups allows");
        expect(r.stderr).toContain("Nothing in the database was changed");
        // A tenth of the file system (6.4 MiB) stays free, less a little between two checks.
        expect(minFree).toBeGreaterThan(4 << 20);
        expect(await stats()).toEqual(before);
        expect((await readdir(home)).filter((f) => f.startsWith(".shinkei-restore-"))).toEqual([]);
      } finally {
        await Bun.spawn(["umount", "-l", home]).exited;
      }
    },
  );
});

describe("what a restore picks", () => {
  test("never an off-site object dated in the future or without a manifest", async () => {
    const s3 = await TestS3.start();
    try {
      const real = await takeBackup(s3.env("picks/")); // local, and copied off-site
      // Someone with write access to the bucket plants a valid-looking backup dated 2999 (with a
      // manifest), and a newer one without any.
      const planted = join(dir, "planted.sql");
      await writeFile(planted, "DROP TABLE users;\n");
      const put = (key: string, body: Buffer | string) =>
        s3.client().send(new PutObjectCommand({ Bucket: s3.bucket, Key: `picks/${key}`, Body: body }));
      const future = "shinkei_backup_29990101_000000.sql";
      await put(future, await readFile(planted));
      await put(
        `${future}.manifest.json`,
        JSON.stringify({
          file: future,
          sizeBytes: 18,
          sha256: new Bun.CryptoHasher("sha256").update("DROP TABLE users;\n").digest("hex"),
          counts: {},
        }),
      );
      const now = new Date(Date.now() + 60_000).toISOString().replace(/\D/g, "").slice(0, 14);
      await put(`shinkei_backup_${now.slice(0, 8)}_${now.slice(8)}.sql`, await readFile(planted));

      const r = await restore(confirm(), s3.env("picks/"));
      expect(r.stderr).toBe("");
      expect(r).toSucceed();
      expect(r.stdout).toContain(`restored       ${real.split("/").at(-1)}`);
      const [users] = await db.sql`select count(*)::int as n from users`;
      expect(users!.n).toBeGreaterThan(0);
    } finally {
      await s3.stop();
    }
  });

  test("with BACKUP_MANIFEST_KEY, never an unsigned or renamed newer backup planted off-site", async () => {
    const s3 = await TestS3.start();
    try {
      const key = { ...s3.env("signed-picks/"), BACKUP_MANIFEST_KEY: "k".repeat(40) };
      const real = await takeBackup(key); // signed, local, and copied off-site
      const name = real.split("/").at(-1)!;
      await rm(real);
      await rm(`${real}.manifest.json`); // the host lost its disk: only the bucket has it
      const put = (k: string, body: Buffer | string) =>
        s3.client().send(new PutObjectCommand({ Bucket: s3.bucket, Key: `signed-picks/${k}`, Body: body }));
      const get = async (k: string) =>
        (await s3.client().send(new GetObjectCommand({ Bucket: s3.bucket, Key: `signed-picks/${k}` })))
          .Body!.transformToByteArray()
          .then((b) => Buffer.from(b));
      const signed = JSON.parse((await get(`${name}.manifest.json`)).toString());
      const later = (s: number) => {
        const t = new Date(Date.now() + s * 1000).toISOString().replace(/\D/g, "");
        return `shinkei_backup_${t.slice(0, 8)}_${t.slice(8, 14)}.sql`;
      };
      // Someone who can write to the bucket, but not sign: this database's manifest, unsigned, for
      // a file of theirs, and the real signed backup copied under a newer name.
      const planted = later(60);
      const body = "DROP TABLE users;\n";
      await put(planted, body);
      const sha256 = new Bun.CryptoHasher("sha256").update(body).digest("hex");
      const { signature: _, ...unsigned } = signed;
      await put(`${planted}.manifest.json`, JSON.stringify({ ...unsigned, file: planted, sizeBytes: 18, sha256 }));
      const replayed = later(120).replace(".sql", ".sql.zst");
      await put(replayed, await get(name));
      await put(`${replayed}.manifest.json`, JSON.stringify(signed));

      const r = await restore(confirm(), key);
      expect(r.stderr).toBe("");
      expect(r).toSucceed();
      expect(r.stdout).toContain(`restored       ${name}`);
      // Nothing the default passed over was brought into BACKUP_DIR.
      expect((await readdir(dir)).filter((f) => f.includes(planted) || f.includes(replayed))).toEqual([]);
    } finally {
      await s3.stop();
    }
  });

  test.skipIf(!canMount)(
    "an off-site manifest too large to be one is passed over, never downloaded whole",
    async () => {
      const s3 = await TestS3.start();
      const tmp = await tempDir("huge-manifest-tmp");
      expect(await mountTmpfs(tmp, "32m")).toBe(true);
      try {
        const real = await takeBackup(s3.env("huge/"));
        // A newer name with a "manifest" of 80 MiB beside it: the temporary folder (32 MiB here) the
        // default reads manifests through would fill, and the manifest would be read into memory.
        const t = new Date(Date.now() + 60_000).toISOString().replace(/\D/g, "");
        const planted = `shinkei_backup_${t.slice(0, 8)}_${t.slice(8, 14)}.sql`;
        const put = (k: string, body: Buffer | string) =>
          s3.client().send(new PutObjectCommand({ Bucket: s3.bucket, Key: `huge/${k}`, Body: body }));
        await put(planted, "DROP TABLE users;\n");
        await put(`${planted}.manifest.json`, Buffer.alloc(80 << 20, 0x20));
        const r = await restore(confirm(), { ...s3.env("huge/"), TMPDIR: tmp });
        expect(r.stderr).toBe("");
        expect(r).toSucceed();
        expect(r.stdout).toContain(`restored       ${real.split("/").at(-1)}`);
      } finally {
        await Bun.spawn(["umount", "-l", tmp]).exited;
        await s3.stop();
      }
    },
  );

  test("a plain file on a host that encrypts needs --allow-unencrypted", async () => {
    const file = join(dir, "plain.sql");
    await dump(file);
    const before = await stats();
    // A key pair, not a passphrase: what the host encrypts with is not the point, and a passphrase
    // costs a second of scrypt for the safety backup.
    const key = join(await tempDir("untrusted-key"), "age.key");
    const encrypts = { BACKUP_AGE_RECIPIENTS: await writeIdentity(key), BACKUP_AGE_IDENTITY: key };
    const r = await restore(["--backup-file", file, ...confirm()], encrypts);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("is not encrypted, and this host encrypts its backups");
    expect(await readdir(dir)).toEqual(["plain.sql"]); // no safety backup either
    expect(await stats()).toEqual(before);
    const ok = await restore(["--backup-file", file, ...confirm(), "--allow-unencrypted"], encrypts);
    expect(ok).toSucceed();
  });

  test("with BACKUP_MANIFEST_KEY, an edited or unsigned manifest fails verification", async () => {
    const key = { BACKUP_MANIFEST_KEY: "k".repeat(40) };
    const file = await takeBackup(key);
    expect(await shinkei(["backup", "verify", file], { ...env, ...key })).toSucceed();
    const manifestFile = `${file}.manifest.json`;
    const original = await readFile(manifestFile, "utf8");
    const edited = JSON.parse(original);
    edited.counts.users = 99;
    await writeFile(manifestFile, JSON.stringify(edited));
    let r = await shinkei(["backup", "verify", file], { ...env, ...key });
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain("signature does not match");
    delete edited.signature;
    await writeFile(manifestFile, JSON.stringify(edited));
    r = await restore(["--backup-file", file, ...confirm()], key);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the manifest is not signed");
    await writeFile(manifestFile, original);
    expect((await shinkei(["backup", "verify", file], { ...env, BACKUP_MANIFEST_KEY: "x".repeat(40) })).code).toBe(1);
    // Found in review: an old signed backup copied under a newer name would be the default pick.
    const replayed = join(dir, "shinkei_backup_29991231_000000.sql.zst");
    await writeFile(replayed, await readFile(file));
    await writeFile(`${replayed}.manifest.json`, original);
    r = await shinkei(["backup", "verify", replayed], { ...env, ...key });
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain("a backup copied under another name");
  });

  test("with BACKUP_MANIFEST_KEY a file without manifest needs --allow-unsigned: restore, recover alike", async () => {
    const key = { BACKUP_MANIFEST_KEY: "k".repeat(40) };
    const file = join(dir, "stock.sql");
    await dump(file);
    const before = await stats();
    const r = await restore(["--backup-file", file, ...confirm()], key);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("has no manifest, and BACKUP_MANIFEST_KEY is set");
    expect(r.stderr).toContain("--allow-unsigned");
    expect(await readdir(dir)).toEqual(["stock.sql"]); // no safety backup either
    const recover = await shinkei(["recover", "--wait", "--user", "nobody@example.com", "--from", file, "--dry-run"], {
      ...env,
      ...key,
    });
    expect(recover.code).toBe(1);
    expect(recover.stderr).toContain("has no manifest, and BACKUP_MANIFEST_KEY is set");
    expect(await stats()).toEqual(before);
    expect(await restore(["--backup-file", file, ...confirm(), "--allow-unsigned"], key)).toSucceed();
  });
});

describe("the guard and the lock", () => {
  test("production, --yes without --confirm-database, and --no-safety-backup alone are refused", async () => {
    const file = await takeBackup();
    const before = await stats();
    const cases: [string[], Record<string, string>, string][] = [
      [[...confirm()], { SHINKEI_ENV: "production" }, "SHINKEI_ENV/NODE_ENV is production"],
      [["--yes"], {}, `--yes --confirm-database ${db.name}`],
      [["--yes", "--confirm-database", "other_db"], {}, `does not name the target database "${db.name}"`],
      [["--no-safety-backup"], {}, "without a safety backup"],
    ];
    for (const [args, extra, message] of cases) {
      const r = await restore(["--backup-file", file, ...args], extra);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(message);
    }
    expect((await readdir(dir)).filter((n) => n.includes("_backup_")).length).toBe(2); // the backup and its manifest
    expect(await stats()).toEqual(before);
    const allowed = await restore(["--backup-file", file, ...confirm(), "--allow-production"], {
      SHINKEI_ENV: "production",
    });
    expect(allowed).toSucceed();
  });

  test("a restore whose lock connection is killed rolls back and exits", async () => {
    const file = await takeBackup();
    await slowToLoad(file, 2);
    await db.sql`insert into worlds (owner_id, name) select id, 'written after the backup' from users limit 1`;
    const before = await stats();
    const p = await Service.start(
      ["backup", "--restore", "--backup-file", file, ...confirm(), "--no-safety-backup", "--allow-superuser"],
      {
        ...env,
        NO_COLOR: "1",
      },
    );
    let killed = 0;
    for (let i = 0; i < 100 && killed === 0; i++) {
      // Only once the lock is held: killed while still asking for it, it is not a lock lost.
      const rows = await db.sql`select pg_terminate_backend(a.pid) as ok from pg_stat_activity a
        where a.application_name = ${`shinkei restore (pid ${p.proc.pid})`}
          and exists (select 1 from pg_locks l where l.pid = a.pid and l.locktype = 'advisory' and l.granted)`;
      killed = rows.length;
      if (!killed) await Bun.sleep(50);
    }
    expect(killed).toBe(1);
    const [stderr, code] = await Promise.all([p.stderr(), p.proc.exited]);
    expect(code).toBe(1);
    expect(stderr).toContain("lock was lost");
    expect(stderr).not.toContain("restored ");
    expect(await stats()).toEqual(before);
  });
});

/**
 * The file's code runs during the load (a trigger, a default, a function a statement calls), and
 * `SET ROLE` is no boundary for it: a session may take any role its login role may, so a superuser
 * login is a superuser to any function body. The load logs in as a role that is not one instead.
 */
describe("the file's code never runs with a superuser's rights", () => {
  let app: TestDatabase & { role: string; appUrl: string };
  let home: string;
  let markDir: string;
  const appStats = () => app.sql.begin((tx) => tableStats(tx));
  const restoreApp = (file: string, extra: string[] = []) =>
    shinkei(
      [
        "backup",
        "--restore",
        "--backup-file",
        file,
        "--yes",
        "--confirm-database",
        app.name,
        "--no-safety-backup",
        ...extra,
      ],
      { DATABASE_URL: app.url, BACKUP_DIR: home },
    );
  const temporaryRoles = async () =>
    (await app.sql`select rolname from pg_roles where rolname like 'shinkei\_restore\_%'`).map((r) => r.rolname);

  beforeAll(async () => {
    const db = await freshDatabase("untrusted_app", serverUrl);
    // The deployment's layout: the app's role (no superuser) owns the database and its tables; the
    // restore's DATABASE_URL is the superuser's (app.url).
    const role = db.name.replace("shinkei_test_", "app_");
    await db.sql.unsafe(`create role ${role} login nosuperuser`);
    await db.sql.unsafe(`alter database ${db.name} owner to ${role}`);
    const u = new URL(urlFor(db.name, serverUrl));
    u.username = role;
    const sql = connect(u.toString(), { max: 1 });
    try {
      await migrate(sql);
      await seedSample(sql, "a");
    } finally {
      await sql.end();
    }
    app = { ...db, role, appUrl: u.toString() };
    home = await tempDir("untrusted_app");
    // Where the server's OS user could write, were the file's code to reach it: a mark proves nothing otherwise.
    markDir = await tempDir("untrusted_mark");
    await chmod(markDir, 0o777);
    const file = join(home, "seeded.sql");
    await stockDump(app.url, file);
    seededApp = await readFile(file, "utf8");
  });
  afterAll(async () => {
    await app.drop();
    const a = postgres(serverUrl, { max: 1, onnotice: () => {} });
    await a.unsafe(`drop role if exists ${app.role}`).catch(() => {});
    await a.end();
  });

  /**
   * A stock dump of the app's database as seeded, taken once in beforeAll: each test that crafts a
   * file finds the same rows and definitions there (a file that fails is rolled back; one that
   * restores brings back this dump's content), so a pg_dump per file would only cost CPU.
   */
  let seededApp: string;
  /** A stock dump of the app's database with `tail` appended. */
  async function craft(name: string, tail: string): Promise<string> {
    const file = join(home, name);
    await writeFile(file, seededApp + tail);
    return file;
  }

  // Each body tries to climb back to the superuser first (RESET ROLE, set_config('role')), then to
  // reach the server's OS: as the load's role, PostgreSQL refuses both.
  const climb = `BEGIN PERFORM pg_catalog.set_config('role', 'postgres', true); EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'RESET ROLE'; EXCEPTION WHEN OTHERS THEN NULL; END;`;
  test.each([
    ["COPY ... TO PROGRAM", "COPY (SELECT 1) TO PROGRAM 'touch MARK'", "pg_execute_server_program"],
    [
      "dynamic EXECUTE of COPY TO PROGRAM",
      "EXECUTE 'COPY (SELECT 1) TO PROGRAM ' || quote_literal('touch MARK')",
      "pg_execute_server_program",
    ],
    ["lo_export", "PERFORM lo_export(lo_from_bytea(0, 'x'), 'MARK')", "permission denied for function lo_export"],
    [
      "pg_read_file",
      "PERFORM pg_read_file('/etc/hostname'); COPY (SELECT 1) TO 'MARK'",
      "permission denied for function pg_read_file",
    ],
  ])(
    "a function the file defines and calls, doing %s, fails: nothing changed, no file written",
    async (_, body, denied) => {
      const mark = join(markDir, `mark-${crypto.randomUUID()}`);
      const file = await craft(
        "evil.sql",
        `
CREATE FUNCTION public.evil() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  ${climb}
  ${body.replaceAll("MARK", mark)};
  RETURN NEW;
END $f$;
CREATE TRIGGER evil BEFORE INSERT ON public.worlds FOR EACH ROW EXECUTE FUNCTION public.evil();
INSERT INTO public.worlds (owner_id, name) SELECT id, 'through the trigger' FROM public.users LIMIT 1;
`,
      );
      const before = await appStats();
      const r = await restoreApp(file);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(denied);
      expect(r.stderr).toContain("Nothing in the database was changed");
      expect(existsSync(mark)).toBe(false);
      expect(await appStats()).toEqual(before);
      const [f] = await app.sql`select to_regprocedure('public.evil()') as f`;
      expect(f!.f).toBeNull();
      expect(await temporaryRoles()).toEqual([]);
    },
  );

  test("a SQL function called from a column default cannot read the server's files either", async () => {
    const file = await craft(
      "default.sql",
      `
CREATE FUNCTION public.peek() RETURNS text LANGUAGE sql AS $f$ SELECT pg_catalog.pg_read_file('/etc/hostname') $f$;
CREATE TABLE public.loot (id int, body text DEFAULT public.peek());
INSERT INTO public.loot (id) VALUES (1);
`,
    );
    const before = await appStats();
    const r = await restoreApp(file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("permission denied for function pg_read_file");
    expect(await appStats()).toEqual(before);
    const [t] = await app.sql`select to_regclass('public.loot') as t`;
    expect(t!.t).toBeNull();
  });

  test("code the file runs that alters a database (its own included) is caught before COMMIT", async () => {
    const file = await craft(
      "alter-database.sql",
      `
CREATE FUNCTION public.side() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN EXECUTE 'ALTER DATABASE ' || quote_ident(current_database()) || ' CONNECTION LIMIT 0'; RETURN 1; END $f$;
CREATE TABLE public.t AS SELECT public.side() AS x;
`,
    );
    const limit = async () =>
      (await app.sql`select datconnlimit from pg_database where datname = current_database()`)[0]!.datconnlimit;
    const before = await appStats();
    const r = await restoreApp(file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("changed during the load (pg_database)");
    expect(await limit()).toBe(-1);
    expect(await appStats()).toEqual(before);
  });

  test("an operator the file defines never stands in for the catalog's, in the checks or later commands", async () => {
    // `nspname !~ '^pg_'` finds no exact !~(name, name) in pg_catalog, so PostgreSQL would pick this
    // one: it would run inside the restore's checks (after the catalog was watched) and again as
    // the superuser whenever shinkei lists the tables (status, the next restore, a backup).
    const file = await craft(
      "operator.sql",
      // pg_dump's empty search_path would hide it from the checks: the file puts public back, before
      // pg_catalog, so that even its look-alike of oid = oid (a signature pg_catalog has) would win.
      `
SET search_path = public, pg_catalog;
CREATE TABLE public.operator_ran (who text, super boolean);
GRANT INSERT ON public.operator_ran TO PUBLIC;
CREATE FUNCTION public.nameregexne(a name, b name) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO public.operator_ran
    SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
  RETURN pg_catalog.textregexne(a::text, b::text);
END $f$;
CREATE OPERATOR public.!~ (LEFTARG = name, RIGHTARG = name, FUNCTION = public.nameregexne);
CREATE FUNCTION public.oideq(a oid, b oid) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO public.operator_ran
    SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user;
  RETURN a OPERATOR(pg_catalog.=) b;
END $f$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.oideq);
`,
    );
    const ran = async () =>
      (await app.sql`select who, super from public.operator_ran`).map((r) => `${r.who}:${r.super}`);
    try {
      const r = await restoreApp(file);
      expect(r).toSucceed();
      expect(await ran()).toEqual([]);
      // As the superuser of DATABASE_URL: the table listing of status, and of a backup.
      const env = { DATABASE_URL: app.url, BACKUP_DIR: home };
      expect(await shinkei(["status"], env)).toSucceed();
      expect(await ran()).toEqual([]);
      expect(await takeBackupWith(env)).toBeTruthy();
      expect(await ran()).toEqual([]);
      // The operator works for whoever asks for it: nothing else kept it out.
      await app.sql`select 'pg_x'::name !~ '^pg_'::name as x`;
      expect((await ran()).length).toBe(1);
    } finally {
      await app.sql.unsafe(
        "drop operator if exists public.!~ (name, name); drop function if exists public.nameregexne(name, name);" +
          "drop operator if exists public.= (oid, oid); drop function if exists public.oideq(oid, oid);" +
          "drop table if exists public.operator_ran",
      );
    }
  });

  test("code the file runs that changes a role's password is caught before COMMIT", async () => {
    const file = await craft(
      "alter-role.sql",
      `
CREATE FUNCTION public.side() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN EXECUTE 'ALTER ROLE ' || quote_ident(current_user) || ' PASSWORD ''planted'''; RETURN 1; END $f$;
CREATE TABLE public.t AS SELECT public.side() AS x;
`,
    );
    const password = async () =>
      (await app.sql`select rolpassword from pg_authid where rolname = ${app.role}`)[0]!.rolpassword;
    const before = { stats: await appStats(), password: await password() };
    const r = await restoreApp(file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("a role's password, expiry or memberships changed during the load (pg_authid)");
    expect(r.stderr).toContain("Nothing in the database was changed");
    expect({ stats: await appStats(), password: await password() }).toEqual(before);
  });

  test("default privileges and extensions outside the database's own schemas stay as they were", async () => {
    // Neither is dropped or brought back by a restore: changed by one file, they would outlive it
    // and every restore after it (its undo too), e.g. every table created later granted to PUBLIC.
    const outside = async () => ({
      defaults: await app.sql`select defaclrole::text, defaclnamespace::text, defaclobjtype::text,
          defaclacl::text from pg_default_acl order by 1, 2, 3`,
      extensions: await app.sql`select extname::text, extnamespace::regnamespace::text from pg_extension order by 1`,
    });
    const cases: [string, string, string][] = [
      [
        "default-acl.sql",
        "CREATE TABLE public.t (x int);\nALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO PUBLIC;\n",
        "default privileges outside the database's own schemas changed during the load (pg_default_acl)",
      ],
      [
        "default-acl-catalog.sql",
        "CREATE TABLE public.t (x int);\n" +
          "ALTER DEFAULT PRIVILEGES IN SCHEMA pg_catalog GRANT ALL ON TABLES TO PUBLIC;\n",
        "default privileges outside the database's own schemas changed during the load (pg_default_acl)",
      ],
      [
        "default-acl-code.sql",
        `CREATE FUNCTION public.side() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN EXECUTE 'ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO PUBLIC'; RETURN 1; END $f$;
CREATE TABLE public.t AS SELECT public.side() AS x;
`,
        "default privileges outside the database's own schemas changed during the load (pg_default_acl)",
      ],
      [
        "extension-by-code.sql",
        `CREATE FUNCTION public.side() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN EXECUTE 'CREATE EXTENSION citext SCHEMA pg_catalog'; RETURN 1; END $f$;
CREATE TABLE public.t AS SELECT public.side() AS x;
`,
        "extensions outside the database's own schemas changed during the load (pg_extension)",
      ],
    ];
    for (const [name, tail, message] of cases) {
      const file = await craft(name, tail);
      const before = { stats: await appStats(), outside: await outside() };
      const r = await restoreApp(file);
      expect({ name, code: r.code }).toEqual({ name, code: 1 });
      expect(r.stderr).toContain(message);
      expect(r.stderr).toContain("Nothing in the database was changed");
      expect({ stats: await appStats(), outside: await outside() }).toEqual(before);
    }
  });

  test("an extension a file's statement puts in pg_catalog is the file's: the next restore takes it away", async () => {
    // A dump of a database with citext in pg_catalog holds this statement (and a restore of it into a
    // new database must work); but the extension, owned by the app's role, must not outlive the file.
    const citext = async () =>
      (await app.sql`select extnamespace::regnamespace::text as s from pg_extension where extname = 'citext'`).map(
        (r) => r.s,
      );
    const genuine = await craft("genuine.sql", "");
    for (const tail of [
      "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA pg_catalog;\n",
      "SET search_path = pg_catalog;\nCREATE EXTENSION IF NOT EXISTS citext CASCADE;\n",
    ]) {
      expect(await restoreApp(await craft("citext-catalog.sql", tail))).toSucceed();
      expect(await citext()).toEqual(["pg_catalog"]);
      expect(await restoreApp(genuine)).toSucceed();
      expect(await citext()).toEqual([]);
    }
  });

  test("only what CREATE EXTENSION made is an extension's own: objects the file's code adds are not", async () => {
    // The checks pass over extension members (tables.ts does not count them either): a function or
    // table the file's code made and then added to an extension hid from "nothing appeared that the
    // file does not define" (here a look-alike of lower() for varchar, picked over pg_catalog's).
    const plant = (statements: string) => `CREATE TABLE public.t (x int);
CREATE FUNCTION public.plant() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN ${statements} RETURN NEW; END $f$;
CREATE TRIGGER plant AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.plant();
INSERT INTO public.t VALUES (1);
`;
    const lookalike =
      "EXECUTE 'CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS ''SELECT 1::text'''; ";
    const create = "CREATE EXTENSION IF NOT EXISTS fuzzystrmatch WITH SCHEMA public;\n";
    const cases: [string, string][] = [
      [
        "extension-add-function.sql",
        create + plant(`${lookalike}EXECUTE 'ALTER EXTENSION fuzzystrmatch ADD FUNCTION public.lower(varchar)';`),
      ],
      [
        "extension-add-table.sql",
        create +
          plant(
            "EXECUTE 'CREATE TABLE public.hidden (secret text)'; " +
              "EXECUTE 'ALTER EXTENSION fuzzystrmatch ADD TABLE public.hidden';",
          ),
      ],
      [
        // Made by the code before the file's own CREATE EXTENSION ... IF NOT EXISTS, which then makes nothing.
        "extension-made-by-code.sql",
        plant(
          `EXECUTE 'CREATE EXTENSION fuzzystrmatch WITH SCHEMA public'; ${lookalike}` +
            "EXECUTE 'ALTER EXTENSION fuzzystrmatch ADD FUNCTION public.lower(varchar)';",
        ) + create,
      ],
    ];
    for (const [name, tail] of cases) {
      const file = await craft(name, tail);
      const before = await appStats();
      const r = await restoreApp(file);
      expect({ name, code: r.code }).toEqual({ name, code: 1 });
      expect(r.stderr).toContain("were added to an extension during the load, not made by its CREATE EXTENSION");
      expect(r.stderr).toContain("Nothing in the database was changed");
      expect(await appStats()).toEqual(before);
    }
    // The extension alone, as a stock dump holds it, restores; its functions are its own. So do those
    // CASCADE makes with it (cube, for earthdistance: not trusted, so as a superuser, on a superuser's database).
    expect(await restoreApp(await craft("extension.sql", create))).toSucceed();
    const cascade = "CREATE EXTENSION IF NOT EXISTS earthdistance WITH SCHEMA public CASCADE;\n";
    // This file restores: a dump of the database as it is now, not the seeded one.
    const cascadeFile = join(dir, "cascade.sql");
    await dump(cascadeFile);
    await writeFile(cascadeFile, (await readFile(cascadeFile, "utf8")) + cascade);
    expect(await restore(["--backup-file", cascadeFile, ...confirm()])).toSucceed();
    const [cube] = await db.sql`select count(*)::int as n from pg_extension where extname in ('cube', 'earthdistance')`;
    expect(cube!.n).toBe(2);
    const [row] = await app.sql`select count(*)::int as n from pg_proc where proname = 'levenshtein'`;
    expect(row!.n).toBeGreaterThan(0);
  });

  test("the content digest never runs a cast the loaded data defined (record_out, not ::text)", async () => {
    // Defined straight in the database (the judge refuses CREATE CAST in a file): a cast from a row
    // type to text whose function would fail, and mark, if whoever takes the digest ran it.
    await app.sql.unsafe(`
      create table public.casted (a int);
      insert into public.casted values (1), (2);
      create function public.cast_out(public.casted) returns text language plpgsql as
        $f$ begin raise exception 'the cast ran'; end $f$;
      create cast (public.casted as text) with function public.cast_out(public.casted)`);
    try {
      const stats = await appStats();
      expect(stats.counts.casted).toBe(2);
      // The digest is of the rows' text, as the built-in output gives it ("(1)", "(2)").
      const [row] = await app.sql.unsafe<{ d: string }[]>(
        `select coalesce(sum(('x' || substr(md5(t), 1, 16))::bit(64)::int8::numeric), 0)::text as d
           from (values ('(1)'), ('(2)')) v(t)`,
      );
      expect(stats.digests.casted).toBe(row!.d);
    } finally {
      // The cast and its function go with the type.
      await app.sql.unsafe("drop table public.casted cascade");
    }
  });

  test("ours and a stock pg_dump .sql (OWNER TO lines) restore, owned by the app's role", async () => {
    const before = await appStats();
    // A temporary role a killed load left a day ago goes with the next load; one made a moment ago
    // (another load's, about to log in) stays.
    await app.sql.unsafe(
      `create role shinkei_restore_0ld000000000 login valid until '${new Date(Date.now() + 3_600_000).toISOString()}'`,
    );
    await app.sql.unsafe(
      `create role shinkei_restore_a11ve0000000 login valid until '${new Date(Date.now() + 86_000_000).toISOString()}'`,
    );
    const ours = await takeBackupWith({ DATABASE_URL: app.url, BACKUP_DIR: home });
    const stock = join(home, "stock.sql");
    await stockDump(app.url, stock);
    expect(await readFile(stock, "utf8")).toContain(`OWNER TO ${app.role}`);
    try {
      for (const file of [ours, stock]) {
        await app.sql`delete from story_beats`;
        const r = await restoreApp(file);
        expect(r.stderr).toBe(
          file === stock ? "▲ stock.sql has no manifest: it restores, but its row counts cannot be checked.\n" : "",
        );
        expect(r).toSucceed();
        expect(await appStats()).toEqual(before);
        const owners = await app.sql`select distinct tableowner from pg_tables where schemaname = 'public'`;
        expect(owners.map((o) => o.tableowner)).toEqual([app.role]);
        expect(await temporaryRoles()).toEqual(["shinkei_restore_a11ve0000000"]);
      }
    } finally {
      await app.sql.unsafe("drop role if exists shinkei_restore_a11ve0000000");
    }
  });

  /**
   * Our own backup `file` with `code` added after pg_dump's settings (or at its end, after the
   * data), and its manifest made to match.
   */
  async function plant(file: string, code: string, where: "start" | "end" = "start") {
    const sql = new TextDecoder().decode(Bun.zstdDecompressSync(new Uint8Array(await Bun.file(file).arrayBuffer())));
    const at = where === "end" ? sql.length : sql.indexOf("\n\n", sql.indexOf("SET row_security"));
    const planted = Bun.zstdCompressSync(new TextEncoder().encode(`${sql.slice(0, at)}\n${code}${sql.slice(at)}`));
    await Bun.write(file, planted);
    const manifest = await Bun.file(`${file}.manifest.json`).json();
    manifest.sizeBytes = planted.length;
    manifest.sha256 = new Bun.CryptoHasher("sha256").update(planted).digest("hex");
    await Bun.write(`${file}.manifest.json`, JSON.stringify(manifest, null, 2));
  }
  /** A function body that writes `mark` through the server's programs, but only as a superuser. */
  const asSuperuser = (mark: string) => `IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    COPY (SELECT 1) TO PROGRAM 'touch ${mark}';
  END IF;`;

  test("a drill of a planted backup runs its code without a superuser's rights", async () => {
    const mark = join(markDir, `drill-${crypto.randomUUID()}`);
    const file = await takeBackupWith({ DATABASE_URL: app.url, BACKUP_DIR: home });
    await plant(
      file,
      `
CREATE TABLE public.evil_t (x int);
CREATE FUNCTION public.evil() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  ${climb}
  COPY (SELECT 1) TO PROGRAM 'touch ${mark}';
  RETURN NEW;
END $f$;
CREATE TRIGGER evil BEFORE INSERT ON public.evil_t FOR EACH ROW EXECUTE FUNCTION public.evil();
INSERT INTO public.evil_t VALUES (1);
`,
    );
    const r = await shinkei(["backup", "drill", file], { DATABASE_URL: app.url, BACKUP_DIR: home });
    expect(r.code).toBe(1);
    expect(`${r.stdout}${r.stderr}`).toContain("pg_execute_server_program");
    expect(existsSync(mark)).toBe(false);
    expect(await temporaryRoles()).toEqual([]);
    await rm(file);
    await rm(`${file}.manifest.json`);
  });

  // After the load, the drill reads every row as text (its digests): a cast the file defines would
  // run there, so the reads log in as the scratch's role too, never as DATABASE_URL's superuser.
  test("a drill's digests never run the file's cast to text as a superuser", async () => {
    const mark = join(markDir, `cast-${crypto.randomUUID()}`);
    const file = await takeBackupWith({ DATABASE_URL: app.url, BACKUP_DIR: home });
    await plant(
      file,
      `
CREATE TABLE public.evil_t (x int);
INSERT INTO public.evil_t VALUES (1);
CREATE FUNCTION public.evil_text(public.evil_t) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
  ${asSuperuser(mark)}
  RAISE EXCEPTION 'the cast ran as %', current_user;
END $f$;
CREATE CAST (public.evil_t AS text) WITH FUNCTION public.evil_text(public.evil_t);
`,
    );
    try {
      const r = await shinkei(["backup", "drill", file], { DATABASE_URL: app.url, BACKUP_DIR: home });
      expect(r.code).toBe(1);
      // The cast ran as the load's role, or the file was refused outright (a judge that refuses casts).
      expect(`${r.stdout}${r.stderr}`).toMatch(/the cast ran as shinkei_restore_|a restore may not contain it/);
      expect(existsSync(mark)).toBe(false);
      expect(await temporaryRoles()).toEqual([]);
    } finally {
      await rm(file);
      await rm(`${file}.manifest.json`);
    }
  });

  // A backup at an older schema version is migrated in the scratch database: the migration's
  // INSERT into schema_migrations fires the file's trigger, as the scratch's role.
  test("recover --dry-run never runs the file's trigger on schema_migrations as a superuser", async () => {
    const mark = join(markDir, `migrate-${crypto.randomUUID()}`);
    const old = await freshDatabase("untrusted_old", serverUrl);
    let file: string;
    try {
      await migrate(old.sql, migrations.slice(0, -1));
      await seedSample(old.sql, "a");
      file = await takeBackupWith({ DATABASE_URL: old.url, BACKUP_DIR: home });
    } finally {
      await old.drop();
    }
    await plant(
      file,
      `
CREATE FUNCTION public.evil() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  ${asSuperuser(mark)}
  RAISE EXCEPTION 'the trigger ran as %', current_user;
END $f$;
CREATE TRIGGER evil BEFORE INSERT ON public.schema_migrations FOR EACH ROW EXECUTE FUNCTION public.evil();
`,
      "end",
    );
    try {
      const r = await shinkei(["recover", "--from", file, "--user", "a1@example.com", "--dry-run"], {
        DATABASE_URL: app.url,
        BACKUP_DIR: home,
      });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("the trigger ran as shinkei_restore_");
      expect(existsSync(mark)).toBe(false);
      expect(await temporaryRoles()).toEqual([]);
    } finally {
      await rm(file);
      await rm(`${file}.manifest.json`);
    }
  });

  test("a database only a superuser owns is refused before anything is done, unless --allow-superuser", async () => {
    const file = await takeBackup();
    const before = await stats();
    const r = await shinkei(["backup", "--restore", "--backup-file", file, ...confirm()], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("there is no role without access to the server's files and programs");
    expect((await readdir(dir)).filter((n) => n.includes("pre-restore")).length).toBe(0);
    expect(await stats()).toEqual(before);
    // Without a safety backup the file is judged while the role is looked for: the refusal stops
    // the judge, and its spool goes with it.
    const unsafe = await shinkei(["backup", "restore", file, ...confirm(), "--no-safety-backup"], env);
    expect(unsafe.code).toBe(1);
    expect(unsafe.stderr).toContain("there is no role without access to the server's files and programs");
    expect((await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory())).toEqual([]);
    expect(await stats()).toEqual(before);
    expect(await restore(["--backup-file", file, ...confirm()])).toSucceed();
  });
});

describe("on a server that asks every role for a password (scram-sha-256)", () => {
  test("the load's temporary role logs in with its password, restores, and is gone", async () => {
    const server = await startCluster();
    const admin = postgres(server.url(), { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe("alter role postgres password 'a superuser password'");
      await admin.unsafe("create role scram_app login password 'an app password'");
      await admin.unsafe("create database scram owner scram_app");
      const appSql = connect(
        `postgres://scram_app:${encodeURIComponent("an app password")}@127.0.0.1:${server.port}/scram`,
        {
          max: 1,
        },
      );
      try {
        await migrate(appSql);
        await seedSample(appSql, "s");
      } finally {
        await appSql.end();
      }
      // From here on, no role logs in without its password.
      await writeFile(
        join(server.dataDir, "pg_hba.conf"),
        "host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
      );
      await admin`select pg_reload_conf()`;
      const url = `postgres://postgres:${encodeURIComponent("a superuser password")}@127.0.0.1:${server.port}/scram`;
      const folder = await tempDir("untrusted_scram");
      const scramEnv = { DATABASE_URL: url, BACKUP_DIR: folder };
      const file = await takeBackupWith(scramEnv);
      const sql = connect(url, { max: 1 });
      try {
        const before = await sql.begin((tx) => tableStats(tx));
        await sql`delete from story_beats`;
        const r = await shinkei(
          ["backup", "--restore", "--backup-file", file, "--yes", "--confirm-database", "scram", "--no-safety-backup"],
          scramEnv,
        );
        expect(r.stderr).toBe("");
        expect(r).toSucceed();
        expect(await sql.begin((tx) => tableStats(tx))).toEqual(before);
        expect(
          (await sql`select rolname from pg_roles where rolname like 'shinkei\\_restore\\_%'`).map((r) => r.rolname),
        ).toEqual([]);
      } finally {
        await sql.end();
      }
    } finally {
      await admin.end();
      await server.stop();
    }
  });
});
