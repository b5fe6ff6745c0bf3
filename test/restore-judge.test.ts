import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import postgres from "postgres";
import { freshDatabase, urlFor, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { seedSample, tempDir } from "./support/fixtures.ts";
import { shinkei, takeBackup } from "./support/cli.ts";
import { stockDump } from "./support/backup.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { connect } from "../src/pg/db.ts";
import { tableStats } from "../src/backup/digest.ts";
import { judgeFile, load } from "../src/backup/restore.ts";
import { ScriptGuard } from "../src/backup/script.ts";
import { loadGrammar, type Grammar } from "../src/backup/grammar.ts";
import { Judge } from "../src/backup/judge.ts";

/**
 * The restore's judge (judge.ts) against the review of issue 23, and a differential test: on real
 * pg_dump output and hostile variants, our splitter's statement bounds equal PostgreSQL's grammar's,
 * valid dumps restore exactly, and a refused or failed file changes nothing anywhere.
 */

let db: TestDatabase;
let dir: string;
let app: { role: string; url: string };
const enc = new TextEncoder();

/** Everything a hidden statement could have changed: data, role settings, triggers, functions, relations. */
async function fingerprint(sql = db.sql) {
  const stats = await sql.begin((tx) => tableStats(tx));
  const settings =
    await sql`select setdatabase::int, setrole::int, setconfig::text from pg_db_role_setting order by 1, 2`;
  const triggers =
    await sql`select tgrelid::regclass::text as rel, tgname from pg_trigger where not tgisinternal order by 1, 2`;
  const functions =
    await sql`select p.oid::regprocedure::text as f, md5(p.prosrc) as body from pg_proc p join pg_namespace n
      on n.oid = p.pronamespace
    where n.nspname not in ('pg_catalog', 'information_schema') order by 1`;
  const relations =
    await sql`select c.oid::regclass::text as r, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and n.nspname !~ '^pg_temp' order by 1`;
  return {
    stats,
    settings,
    triggers,
    functions: functions.map((f) => `${f.f} ${f.body}`),
    relations: relations.map((r) => `${r.r} ${r.relkind}`),
  };
}

/** pg_dump's closing line, as anyone can write it: verification wants it, only the content can tell. */
const CLOSING = "\n--\n-- PostgreSQL database dump complete\n--\n";

const restoreAs = (url: string, file: string, extra: string[] = []) =>
  shinkei(["backup", "restore", file, "--yes", "--confirm-database", db.name, "--no-safety-backup", ...extra], {
    DATABASE_URL: url,
    BACKUP_DIR: dir,
  });

/*
 * A server of this file's own: a restore refuses to commit when any database's row in pg_database
 * changed during its load, and test files running beside this one (bun test --parallel) create and
 * drop databases on the shared server all the time.
 */
let server: TestCluster;
let serverUrl: string;

/** The grammar this file's pure checks (no database) parse with. */
let grammar: Grammar;

beforeAll(async () => {
  grammar = await loadGrammar();
  server = await startCluster();
  serverUrl = server.url();
  db = await freshDatabase("judge", serverUrl);
  dir = await tempDir("judge");
  // The app's own role, no superuser, owning its database: the review's first reproduction ran as it.
  const role = db.name.replace("shinkei_test_", "app_");
  await db.sql.unsafe(`create role ${role} login nosuperuser`);
  await db.sql.unsafe(`alter database ${db.name} owner to ${role}`);
  const u = new URL(urlFor(db.name, serverUrl));
  u.username = role;
  app = { role, url: u.toString() };
  const sql = connect(app.url, { max: 1 });
  try {
    await migrate(sql);
    await seedSample(sql, "j");
    // What a real dump holds beyond tables: another schema, a large object, a function, a
    // procedure whose body commits, a trigger.
    await sql.unsafe(`
      create schema archive;
      create table archive.notes (id int primary key, body text);
      insert into archive.notes values (1, 'kept'), (2, E'line\\nbreak; COMMIT; -- not a statement');
      select lo_from_bytea(0, 'a large object');
      create function archive.shout(t text) returns text language sql immutable as $$ select upper(t) $$;
      create procedure archive.batch() language plpgsql as $$ begin insert into archive.notes
        values (3, 'x'); commit; end $$;
      create function archive.touch() returns trigger language plpgsql as $$ begin return new; end $$;
      create trigger notes_touch before update on archive.notes for each row execute function archive.touch();
    `);
  } finally {
    await sql.end();
  }
  plainFile = await plainDump("plain.sql");
  plainText = await readFile(plainFile, "utf8");
});

afterAll(async () => {
  await db.drop();
  await db.sql.unsafe(`drop role if exists ${app.role}`).catch(() => {});
  const a = postgres(serverUrl, { max: 1, onnotice: () => {} });
  await a.unsafe(`drop role if exists ${app.role}`).catch(() => {});
  await a.end();
  await server.stop();
});

async function plainDump(name: string, args: string[] = []): Promise<string> {
  const file = join(dir, name);
  await stockDump(db.url, file, ["--no-owner", ...args]);
  return file;
}

/**
 * A stock plain dump of the database as beforeAll leaves it, taken once: no test changes the
 * database (each checks that a refused or failed file changed nothing), so the tests that plant
 * code in a dump, and the differential corpus, read this one instead of running pg_dump again.
 */
let plainFile: string;
let plainText: string;

describe("the review's reproductions (issue 23)", () => {
  test("a COPY line whose -- comment ends at a bare CR hides nothing: refused as the app role, none ran", async () => {
    const mark = join(dir, "copy-cr-mark");
    const hidden = [
      "COPY public.worlds FROM stdin -- x\r; ROLLBACK",
      "CREATE FUNCTION public.evil() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NEW; END $f$",
      "CREATE TRIGGER evil BEFORE INSERT ON public.users FOR EACH ROW EXECUTE FUNCTION public.evil()",
      `ALTER ROLE CURRENT_USER SET search_path = 'evil'`,
      `UPDATE public.users SET password_hash = 'planted'`,
      "SELECT 1\n;\n1\n\\.\n",
    ].join("; ");
    const base = plainText;
    for (const tail of ["SELECT 1/0;\n", ""]) {
      const file = join(dir, "copy-cr.sql");
      await writeFile(file, base + hidden + tail + CLOSING);
      const before = await fingerprint();
      const r = await restoreAs(app.url, file);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("the file contains");
      expect(r.stderr).not.toContain("restored ");
      expect(r.stderr).not.toMatch(/^\s+at /m); // no stack trace
      expect(await fingerprint()).toEqual(before);
      expect(existsSync(mark)).toBe(false);
    }
  });

  test("backup drill and recover --from --dry-run judge the file alike: the hidden part runs nowhere", async () => {
    const env = { DATABASE_URL: db.url, BACKUP_DIR: dir };
    const file = await takeBackup(env);
    // A backup of ours, edited, its manifest's checksum made to match (no BACKUP_MANIFEST_KEY here).
    const sql = new TextDecoder().decode(Bun.zstdDecompressSync(new Uint8Array(await Bun.file(file).arrayBuffer())));
    const at = sql.lastIndexOf("--\n-- PostgreSQL database dump complete");
    const hidden =
      "COPY public.worlds FROM stdin -- x\r; ROLLBACK; ALTER ROLE CURRENT_USER SET work_mem = 1024; SELECT 1\n;\n\\.\n";
    const edited = Bun.zstdCompressSync(enc.encode(sql.slice(0, at) + hidden + sql.slice(at)));
    await Bun.write(file, edited);
    const manifest = await Bun.file(`${file}.manifest.json`).json();
    manifest.sizeBytes = edited.length;
    manifest.sha256 = new Bun.CryptoHasher("sha256").update(edited).digest("hex");
    await Bun.write(`${file}.manifest.json`, JSON.stringify(manifest, null, 2));
    const before = await fingerprint();
    const drill = await shinkei(["backup", "drill", file], env);
    expect(drill.code).toBe(1);
    expect(drill.stdout + drill.stderr).toContain("the file contains");
    // Scratch databases are made one at a time per server, and other test files make them too: --wait queues.
    const recover = await shinkei(
      ["recover", "--wait", "--user", "nobody@example.com", "--from", file, "--dry-run"],
      env,
    );
    expect(recover.code).toBe(1);
    expect(recover.stderr).toContain("the file contains");
    expect(await fingerprint()).toEqual(before);
  });

  test("recover --yes needs --confirm-database, as restore does", async () => {
    const env = { DATABASE_URL: db.url, BACKUP_DIR: dir };
    const r = await shinkei(["recover", "--wait", "--user", "nobody@example.com", "--from", "latest", "--yes"], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`pass --yes --confirm-database ${db.name} to run it unattended`);
    const wrong = await shinkei(
      ["recover", "--wait", "--user", "nobody@example.com", "--from", "latest", "--yes", "--confirm-database", "other"],
      env,
    );
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("does not name the target database");
  });

  test("standard_conforming_strings = off cannot make a COPY option hide statements", async () => {
    const file = join(dir, "scs.sql");
    await writeFile(
      file,
      plainText +
        // Read with the setting on, `'x\' --' );...` is a string, then a comment to the end of the line;
        // read with it off, the string is `x' --`, and three statements follow the COPY.
        ("SET standard_conforming_strings = off;\nCOPY public.worlds FROM stdin WITH (NULL 'x\\' --' ); " +
          "ROLLBACK; ALTER ROLE CURRENT_USER SET work_mem = 1024; SELECT 1 --\n;\n\\.\n") +
        CLOSING,
    );
    const before = await fingerprint();
    const r = await restoreAs(app.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the file contains");
    expect(await fingerprint()).toEqual(before);
  });

  test("the commit guard cannot be replaced from the file", async () => {
    // One dump for every variant: each is refused, and the fingerprint shows the database unchanged.
    const base = plainText;
    for (const planted of [
      // the review's: a DO block, then a hidden COMMIT
      "DO $d$ BEGIN EXECUTE 'CREATE OR REPLACE FUNCTION pg_temp.' || (SELECT proname FROM pg_proc WHERE " +
        "pronamespace = pg_my_temp_schema() LIMIT 1) || '() RETURNS trigger LANGUAGE plpgsql AS $b$ BEGIN " +
        "RETURN NULL; END $b$'; END $d$;\nCOMMIT;\n",
      "CREATE OR REPLACE FUNCTION pg_temp.shinkei_guard_0() RETURNS trigger LANGUAGE plpgsql AS $b$ BEGIN " +
        "RETURN NULL; END $b$;\n",
      "ALTER TABLE pg_temp.x DISABLE TRIGGER ALL;\n",
      "CREATE TEMP TABLE t (x int);\n",
      "SET CONSTRAINTS ALL IMMEDIATE;\n",
      "DROP SCHEMA pg_temp_3 CASCADE;\n",
    ]) {
      const file = join(dir, "guard.sql");
      await writeFile(file, base + planted);
      const before = await fingerprint();
      const r = await restoreAs(db.url, file);
      expect(r.code, planted).toBe(1);
      expect(r.stderr).toContain("the file contains");
      expect(await fingerprint()).toEqual(before);
    }
  });

  test("code the file defines that replaces the guard at run time is caught before COMMIT", async () => {
    // No statement names the guard: a trigger the file defines finds it in the catalog when the
    // COPY fires it. The check before COMMIT sees the guard's body changed, and rolls back.
    const file = join(dir, "runtime.sql");
    const base = plainText;
    const sneaky = `CREATE FUNCTION public.sneak() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE g text;
BEGIN
  SELECT p.oid::regprocedure::text INTO g FROM pg_catalog.pg_proc p
   WHERE p.pronamespace = pg_catalog.pg_my_temp_schema() LIMIT 1;
  EXECUTE 'CREATE OR REPLACE FUNCTION ' || g || ' RETURNS trigger LANGUAGE plpgsql AS $b$ BEGIN RETURN NULL; END $b$';
  RETURN NEW;
END $f$;
CREATE TABLE public.bait (x int);
CREATE TRIGGER sneak BEFORE INSERT ON public.bait FOR EACH ROW EXECUTE FUNCTION public.sneak();
COPY public.bait (x) FROM stdin;
1
\\.
`;
    await writeFile(file, base + sneaky);
    const before = await fingerprint();
    // As the app role, the guard is the app role's own: the check before COMMIT catches the swap.
    const r = await restoreAs(app.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("guard was replaced");
    expect(await fingerprint()).toEqual(before);
    // From the superuser's URL the load logs in as a role of its own (it makes the guard), acting
    // as the owner: the file's code may not even touch the guard.
    const su = await restoreAs(db.url, file);
    expect(su.code).toBe(1);
    expect(su.stderr).toMatch(/must be owner of function shinkei_guard_/);
    expect(await fingerprint()).toEqual(before);
  });

  test("a deferrable trigger the file defines is refused: it would run at COMMIT, after the checks", async () => {
    const file = join(dir, "deferred.sql");
    const base = plainText;
    const late = `CREATE FUNCTION public.late() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  EXECUTE 'CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS ''SELECT 1''';
  RETURN NULL;
END $f$;
CREATE TABLE public.z (x int);
CREATE CONSTRAINT TRIGGER late AFTER INSERT ON public.z DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION public.late();
COPY public.z (x) FROM stdin;
1
\\.
`;
    await writeFile(file, base + late);
    const before = await fingerprint();
    const r = await restoreAs(app.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("a deferrable trigger would run after the restore's checks");
    expect(await fingerprint()).toEqual(before);
  });

  test("a row-security policy of the file cannot run code inside the check: the count reads with it off", async () => {
    const file = join(dir, "policy.sql");
    const base = plainText;
    const peek = `CREATE FUNCTION public.peek(x int) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'planted') THEN
    EXECUTE 'CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS ''SELECT 1''';
  END IF;
  RETURN true;
END $f$;
CREATE TABLE public.watched (x int);
COPY public.watched (x) FROM stdin;
1
2
\\.
ALTER TABLE public.watched ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.watched FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON public.watched USING (public.peek(x));
`;
    await writeFile(file, base + peek);
    const before = await fingerprint();
    // As the app role (the database's owner, no superuser): FORCE makes the policy apply to it.
    const r = await restoreAs(app.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("row-level security");
    expect(await fingerprint()).toEqual(before);
  });

  test("a refusal at the very last line of a big file runs nothing", async () => {
    const file = join(dir, "late.sql");
    // The first statement would take 20 s to run; 20,000 rows of COPY data come after it.
    const rows = Array.from({ length: 20_000 }, (_, i) => `${i}\trow ${i}`).join("\n");
    await writeFile(
      file,
      `CREATE MATERIALIZED VIEW public.slow AS SELECT pg_catalog.pg_sleep(20)::text AS slept;
CREATE TABLE public.big (id int, body text);
COPY public.big (id, body) FROM stdin;
${rows}
\\.
ALTER ROLE CURRENT_USER SET work_mem = '1MB';
${CLOSING}`,
    );
    const before = await fingerprint();
    const started = performance.now();
    const r = await restoreAs(app.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/ALTER ROLE.*line 20005/);
    expect(performance.now() - started).toBeLessThan(15_000);
    expect(await fingerprint()).toEqual(before);
  });

  test("a COPY whose data the server refuses ends with a plain error, no stack trace", async () => {
    const file = join(dir, "bad-copy.sql");
    await writeFile(
      file,
      "CREATE TABLE public.n (x int);\nCOPY public.n (x) FROM stdin;\n1\nnot a number\n\\.\n" + CLOSING,
    );
    const before = await fingerprint();
    const r = await restoreAs(db.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('line 2: invalid input syntax for type integer: "not a number"');
    expect(r.stderr).not.toMatch(/CONNECTION_DESTROYED|^\s+at /m);
    expect(await fingerprint()).toEqual(before);
  });

  test("statements go without waiting for each answer: the first failure is named, none after it runs", async () => {
    const file = join(dir, "pipelined.sql");
    await writeFile(
      file,
      "CREATE TABLE public.p1 (x int);\nCREATE TABLE public.p2 (x int);\nINSERT INTO public.no_such VALUES (1);\n" +
        "CREATE TABLE public.p3 (x int);\nINSERT INTO public.p3 VALUES (1/0);\n" +
        CLOSING,
    );
    const before = await fingerprint();
    const r = await restoreAs(db.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('line 3: relation "public.no_such" does not exist');
    expect(r.stderr).not.toContain("division by zero");
    expect(await fingerprint()).toEqual(before);
  });

  test("a stock file restores only when every COPY-filled table holds the rows sent", async () => {
    const file = join(dir, "rule.sql");
    // A trigger the file defines swallows the rows its COPY sends: the count check refuses the result.
    await writeFile(
      file,
      "CREATE TABLE public.kept (x int);\nCREATE FUNCTION public.eat() RETURNS trigger LANGUAGE plpgsql AS " +
        "$$ BEGIN RETURN NULL; END $$;\n" +
        "CREATE TRIGGER eat BEFORE INSERT ON public.kept FOR EACH ROW EXECUTE FUNCTION public.eat();\nCOPY " +
        "public.kept (x) FROM stdin;\n1\n2\n\\.\n" +
        CLOSING,
    );
    const before = await fingerprint();
    const r = await restoreAs(db.url, file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("kept holds 0 rows, the file sent 2");
    expect(await fingerprint()).toEqual(before);
  });
});

/** Judge `sql` alone (no database): the refusal's message, or null when it passes; and what was spooled. */
function judge(sql: string): { refused: string | null; sent: string[] } {
  const sent: string[] = [];
  const j = new Judge({ text: (_: number, t: string) => sent.push(t), data() {}, endCopy() {} } as never, grammar);
  try {
    j.push(enc.encode(sql));
    j.end();
    return { refused: null, sent };
  } catch (e) {
    return { refused: (e as Error).message, sent };
  }
}

test("two files judged at once in one process (a service's drills) each get a grammar of their own", async () => {
  // The file a line at a time, a turn of the event loop between lines: the two judges interleave,
  // and the quicker one ends while the other still parses.
  const slowly = (pause: number) =>
    new ReadableStream<Uint8Array>({
      async start(controller) {
        for (const line of plainText.split(/(?<=\n)/)) {
          controller.enqueue(enc.encode(line));
          if (pause) await Bun.sleep(0);
          else await Promise.resolve();
        }
        controller.close();
      },
    });
  const files = await Promise.all([
    judgeFile(serverUrl, slowly(0), "plain", { spoolDir: dir }),
    judgeFile(serverUrl, slowly(1), "plain", { spoolDir: dir }),
  ]);
  try {
    expect(files[0].judged.statements).toBeGreaterThan(20);
    expect(files[1].judged.statements).toBe(files[0].judged.statements);
  } finally {
    for (const f of files) f.spool.remove();
  }
});

describe("the allowlist", () => {
  test.each([
    "DO $$ BEGIN PERFORM 1; END $$;",
    "CALL public.p();",
    "ALTER SYSTEM SET shared_preload_libraries = 'x';",
    "LOAD 'auto_explain';",
    "SAVEPOINT a;",
    "RELEASE a;",
    "PREPARE TRANSACTION 'x';",
    "SET ROLE postgres;",
    "SET SESSION AUTHORIZATION postgres;",
    "SET LOCAL ROLE postgres;",
    "RESET ROLE;",
    "RESET SESSION AUTHORIZATION;",
    "SET SESSION AUTHORIZATION DEFAULT;",
    "SET role TO DEFAULT;",
    "CREATE CAST (public.t AS text) WITH FUNCTION public.f(public.t);",
    "GRANT ALL ON DATABASE postgres TO PUBLIC;",
    "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;",
    "ALTER DATABASE other RENAME TO elsewhere;",
    "ALTER DATABASE other OWNER TO someone;",
    "COMMENT ON DATABASE other IS 'x';",
    "SECURITY LABEL ON DATABASE other IS 'x';",
    "RESET ALL;",
    "SET standard_conforming_strings = off;",
    "SET client_encoding = 'LATIN1';",
    "SET search_path = pg_temp, public;",
    "SET work_mem = '1GB';",
    "SELECT pg_catalog.set_config('role', 'postgres', false);",
    "SELECT pg_catalog.set_config('session_authorization', 'postgres', true);",
    "SELECT pg_catalog.set_config('role', 'none', true);",
    "SELECT 1;",
    "SELECT pg_sleep(1);",
    "SELECT pg_catalog.setval('public.s', (SELECT 1), true);",
    "SELECT * FROM pg_catalog.setval('public.s', 1, true);",
    "COPY public.t TO STDOUT;",
    "COPY public.t FROM PROGRAM 'id';",
    "COPY public.t FROM '/etc/passwd';",
    "COPY public.t FROM stdin WITH (FORMAT csv);",
    "COPY public.t FROM stdin WHERE x > 1;",
    "CREATE TEMP TABLE t (x int);",
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'select 1';",
    "ALTER TABLE pg_temp.t ADD COLUMN y int;",
    "CREATE FUNCTION public.shinkei_guard_x() RETURNS int LANGUAGE sql AS 'select 1';",
    "ALTER ROLE CURRENT_USER SET search_path = evil;",
    "ALTER DATABASE x SET search_path = evil;",
    "CREATE ROLE evil SUPERUSER;",
    "GRANT pg_read_server_files TO CURRENT_USER;",
    "SET CONSTRAINTS ALL IMMEDIATE;",
    "DISCARD ALL;",
    "DROP OWNED BY CURRENT_USER;",
    "LISTEN x;",
    "NOTIFY x;",
    "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p;",
    "EXECUTE p;",
    "VACUUM t;",
    "SELECT 1; SELECT 2;",
  ])("refuses %j", (sql) => {
    expect(judge(`${sql}\n`).refused).toContain("the file contains");
  });

  test.each([
    "CREATE PROCEDURE public.batch() LANGUAGE plpgsql AS $$ BEGIN COMMIT; ROLLBACK; END $$;",
    "CREATE FUNCTION public.f() RETURNS trigger LANGUAGE plpgsql SET search_path = public, pg_temp " +
      "AS $$ BEGIN RETURN NEW; END $$;",
    "CREATE FUNCTION public.g() RETURNS integer LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;",
    "SET statement_timeout = 0;",
    "SET client_encoding = 'UTF8';",
    "SET standard_conforming_strings = on;",
    "SELECT pg_catalog.set_config('search_path', '', false);",
    "SET default_table_access_method = heap;",
    "SELECT pg_catalog.setval('public.t_id_seq', 42, true);",
    "SELECT pg_catalog.lo_create('16385');",
    "SELECT pg_catalog.lo_open('16385', 131072);",
    "SELECT pg_catalog.lowrite(0, '\\x0102');",
    "SELECT pg_catalog.lo_close(0);",
    "SELECT * FROM pg_catalog.pg_restore_relation_stats('version', '180000'::integer, " +
      "'schemaname', 'public', 'relname', 't');",
    "CREATE TABLE archive.notes (id integer NOT NULL, body text);",
    "ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);",
    "CREATE INDEX t_idx ON public.t USING btree (id);",
    "CREATE MATERIALIZED VIEW public.m AS SELECT 1 AS x WITH NO DATA;",
    "REFRESH MATERIALIZED VIEW public.m;",
    "COMMENT ON TABLE public.t IS 'a; COMMIT;';",
    "INSERT INTO public.t VALUES (1, E'it''s; -- not a comment');",
    "GRANT SELECT ON TABLE public.t TO PUBLIC;",
    "CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;",
  ])("passes %j", (sql) => {
    expect(judge(`${sql}\n`).refused).toBeNull();
  });

  test("COPY is rebuilt from the parse: no text or option of the file reaches the server", () => {
    const { refused, sent } = judge(`COPY public."odd ""name""" (a, "B") FROM stdin;\n1\t2\n\\.\n`);
    expect(refused).toBeNull();
    expect(sent).toEqual([`COPY "public"."odd ""name""" ("a", "B") FROM STDIN`]);
  });
});

/**
 * The ends (byte offset of each `;`) of the statements as our splitter and as the parser see them;
 * null when either refuses.
 */
function ends(text: Uint8Array): { splitter: number[]; parser: number[] } | null {
  const g = new ScriptGuard();
  let items: ReturnType<ScriptGuard["end"]>;
  try {
    items = [...g.push(text), ...g.end()];
  } catch {
    return null;
  }
  const splitter: number[] = [];
  let at = 0;
  for (const it of items) {
    if (it.kind !== "statement") return null; // COPY data: not for this comparison
    at += it.bytes.length;
    if (!it.empty) splitter.push(at - 1);
  }
  const parsed = grammar.parse(new TextDecoder().decode(text));
  if (!parsed.ok) return null;
  return { splitter, parser: parsed.stmts.map((s) => (s.stmt_location ?? 0) + (s.stmt_len ?? 0)) };
}

describe("differential: our splitter and PostgreSQL's grammar", () => {
  const V = "SELECT pg_catalog.set_config('client_min_messages', 'warning', false)";
  const seps = { CR: "\r", LF: "\n", CRLF: "\r\n", FF: "\f", VT: "\v" };
  const templates = (x: string, p: string) => [
    `${V}; --c${x}${p};\n`,
    `${V} --c${x}; ${p};\n`,
    `/* a${x}/* nested${x}*/ ${p}; */ ${V};\n`,
    `${V} /*${x}*/ ; ${p};\n`,
    `SELECT pg_catalog.set_config('search_path', $t$${x}; ${p}; $t$, false);\n`,
    `SELECT pg_catalog.set_config('search_path', $a$ $b$${x}$a$, false); ${p};\n`,
    `SELECT pg_catalog.set_config('search_path', E'\\'${x}; ${p}; --', false);\n`,
    `SELECT pg_catalog.set_config('search_path', U&'\\0041''${x}; ${p};', false);\n`,
    `SET standard_conforming_strings = off;\nSELECT pg_catalog.set_config('search_path', '\\'${x}; ${p}; ` +
      `--', false);\n`,
  ];

  test("bounds agree on every hostile variant either accepts", () => {
    let compared = 0;
    for (const x of Object.values(seps)) {
      for (const t of templates(
        x,
        "ALTER ROLE CURRENT_USER SET work_mem = 1024; CREATE TABLE public.planted (x int)",
      )) {
        const e = ends(enc.encode(t));
        if (!e) continue;
        expect(e.splitter, JSON.stringify(t)).toEqual(e.parser);
        compared++;
      }
    }
    // The other 7 end inside a `--` comment (one FF or VT does not end; the standard_conforming_strings
    // template read with it on) that swallows the last `;`: the splitter refuses a statement without one.
    expect(compared).toBe(38);
  });

  test("real dumps restore exactly; every hostile variant is refused or harmless, changing nothing else", async () => {
    const mark = join(dir, "variant-mark");
    const payload =
      `ALTER ROLE CURRENT_USER SET work_mem = 1024; COPY (SELECT 1) TO PROGRAM $m$touch ${mark}$m$; CREATE ` +
      `TABLE public.planted (x int)`;
    const good = await fingerprint();
    const corpus = {
      plain: plainFile,
      inserts: await plainDump("inserts.sql", ["--inserts"]),
      privileges: await plainDump("owners.sql", ["--no-privileges"]),
    };
    for (const [name, file] of Object.entries(corpus)) {
      await load(db.url, Bun.file(file).stream(), "plain");
      expect(await fingerprint(), name).toEqual(good);
    }
    const base = await readFile(corpus.plain);
    const variants: [string, Uint8Array][] = [];
    for (const [sep, x] of Object.entries(seps))
      for (const [i, t] of templates(x, payload).entries())
        variants.push([`${sep} #${i}`, Buffer.concat([base, enc.encode(t)])]);
    variants.push([
      "COPY with a CR-ended comment",
      Buffer.concat([base, enc.encode(`COPY public.worlds FROM stdin -- x\r; ${payload}; SELECT 1\n;\n\\.\n`)]),
    ]);
    variants.push(["BOM", Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), base])]);
    variants.push(["NUL", Buffer.concat([base, enc.encode(`${V};\0${payload};\n`)])]);
    let refused = 0;
    for (const [name, bytes] of variants) {
      let error: unknown;
      await load(db.url, new Blob([bytes]).stream(), "plain").catch((e) => (error = e));
      if (error) refused++;
      // Refused or loaded, the database is exactly the dump's, and nothing hidden ran.
      expect(await fingerprint(), name).toEqual(good);
      expect(existsSync(mark), name).toBe(false);
    }
    expect(refused).toBeGreaterThan(10);
  }, 120_000);
});

describe("the spool's read buffers", () => {
  test("a statement and COPY rows longer than the spool's read buffers load byte for byte", async () => {
    const target = await freshDatabase("pieces", serverUrl);
    try {
      // Letters in no repeating order, so a piece read into the wrong place cannot look right.
      const letters = (n: number, seed: number) => {
        const b = Buffer.alloc(n);
        for (let i = 0, x = seed; i < n; i++) b[i] = 97 + (((x = (x * 1103515245 + 12345) >>> 0) >>> 16) % 26);
        return b.toString("latin1");
      };
      // 6 MiB of rows, then a 5 MiB statement: it spans more of the spool's read buffers than are kept.
      const rows = Array.from({ length: 3000 }, (_, i) => `${i}\t${letters(1500 + (i % 1100), i + 1)}`);
      const comment = letters(5 << 20, 7);
      const file = join(dir, "pieces.sql");
      await writeFile(
        file,
        "CREATE TABLE public.pieces (id integer NOT NULL, content text);\n" +
          `COPY public.pieces (id, content) FROM stdin;\n${rows.join("\n")}\n\\.\n` +
          `COMMENT ON TABLE public.pieces IS '${comment}';\n`,
      );
      await load(target.url, Bun.file(file).stream(), "plain", { role: { allowSuperuser: true } });
      const [got] = await target.sql<{ n: number; digest: string; comment: string }[]>`
        select count(*)::int as n, md5(string_agg(id || E'\t' || content, E'\n' order by id)) as digest,
               obj_description('public.pieces'::regclass, 'pg_class') as comment from public.pieces`;
      expect(got!.n).toBe(rows.length);
      expect(got!.digest).toBe(new Bun.CryptoHasher("md5").update(rows.join("\n")).digest("hex"));
      expect(got!.comment.length).toBe(comment.length);
      expect(got!.comment === comment).toBe(true);
    } finally {
      await target.drop();
    }
  }, 120_000);
});
