import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import postgres from "postgres";
import { freshDatabase, urlFor, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { shinkei, takeBackup } from "./support/cli.ts";
import { tempDir } from "./support/fixtures.ts";
import { deleteWorld, digest, recordOf, writer } from "./support/recover.ts";
import { migrate } from "../src/migrations/migrate.ts";
import { migrations } from "../src/migrations/index.ts";
import { connect, type Sql } from "../src/pg/db.ts";

/*
 * shinkei's commands often run as a superuser (DATABASE_URL) in a database whose schemas the app's
 * role owns. PostgreSQL picks a function or operator by the best match of argument types across
 * the search path, so a look-alike of one of pg_catalog's that matches better (untyped parameters
 * before text, a table's row type before anyelement, oid = int4 with no such operator in
 * pg_catalog) would run as that superuser. The app's role plants such look-alikes here, in public
 * and in a schema named after the superuser (searched first, as "$user"); each one records who
 * called it. No command may call one.
 */

setDefaultTimeout(90_000);

let server: TestCluster;
let db: TestDatabase;
let app: Sql;
let env: Record<string, string>;

const mark = (fn: string) => `PERFORM public.lookalike_mark('${fn}');`;
const LOOKALIKES = `
CREATE TABLE public.lookalike_ran (fn text, who text, super boolean);
GRANT SELECT, INSERT ON public.lookalike_ran TO PUBLIC;
CREATE FUNCTION public.lookalike_mark(fn text) RETURNS void LANGUAGE sql AS $f$
  INSERT INTO public.lookalike_ran SELECT fn, current_user, r.rolsuper FROM pg_catalog.pg_roles r
   WHERE r.rolname = current_user $f$;
CREATE FUNCTION public.pg_try_advisory_lock(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN ${mark("pg_try_advisory_lock")} RETURN pg_catalog.pg_try_advisory_lock(a::int4, b::int4); END $f$;
CREATE FUNCTION public.pg_advisory_lock(a text, b text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN ${mark("pg_advisory_lock")} PERFORM pg_catalog.pg_advisory_lock(a::int4, b::int4); END $f$;
CREATE FUNCTION public.pg_advisory_unlock(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN ${mark("pg_advisory_unlock")} RETURN pg_catalog.pg_advisory_unlock(a::int4, b::int4); END $f$;
CREATE FUNCTION public.unnest(a int2[]) RETURNS SETOF int2 LANGUAGE plpgsql AS $f$
BEGIN ${mark("unnest")} RETURN QUERY SELECT pg_catalog.unnest(a); END $f$;
CREATE FUNCTION public.to_jsonb(r public.users) RETURNS jsonb LANGUAGE plpgsql AS $f$
BEGIN ${mark("to_jsonb(users)")} RETURN pg_catalog.to_jsonb(r); END $f$;
CREATE FUNCTION public.jsonb_populate_recordset(b public.story_beats, j jsonb) RETURNS SETOF public.story_beats
LANGUAGE plpgsql AS $f$
BEGIN ${mark("jsonb_populate_recordset")} RETURN QUERY SELECT * FROM pg_catalog.jsonb_populate_recordset(b, j); END $f$;
CREATE FUNCTION public.oid_eq_int4(a oid, b int4) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN ${mark("=(oid,int4)")} RETURN a OPERATOR(pg_catalog.=) b::oid; END $f$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = int4, FUNCTION = public.oid_eq_int4);
CREATE FUNCTION public.oid_eq_regclass(a oid, b regclass) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN ${mark("=(oid,regclass)")} RETURN a OPERATOR(pg_catalog.=) b::oid; END $f$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.oid_eq_regclass);
CREATE FUNCTION public.name_nregex(a name, b name) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN ${mark("!~(name,name)")} RETURN a::text OPERATOR(pg_catalog.!~) b::text; END $f$;
CREATE OPERATOR public.!~ (LEFTARG = name, RIGHTARG = name, FUNCTION = public.name_nregex);
CREATE SCHEMA postgres;
CREATE FUNCTION postgres.pg_try_advisory_lock(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN ${mark("postgres.pg_try_advisory_lock")} RETURN pg_catalog.pg_try_advisory_lock(a::int4, b::int4); END $f$;
`;

beforeAll(async () => {
  server = await startCluster();
  db = await freshDatabase("lookalikes", server.url());
  // The deployment's layout: the app's role owns the database (and public); DATABASE_URL is the superuser's.
  const role = db.name.replace("shinkei_test_", "app_");
  await db.sql.unsafe(`create role ${role} login nosuperuser`);
  await db.sql.unsafe(`alter database ${db.name} owner to ${role}`);
  const u = new URL(urlFor(db.name, server.url()));
  u.username = role;
  app = connect(u.toString(), { max: 1 });
  await migrate(app);
  await writer(app, "alice@example.com");
  await writer(app, "bob@example.com");
  await app.unsafe(LOOKALIKES);
  env = { DATABASE_URL: db.url, BACKUP_DIR: await tempDir("lookalikes") };
});
afterAll(async () => {
  await app?.end({ timeout: 1 });
  await db?.sql.end({ timeout: 1 });
  await server?.stop();
});

const ran = async () =>
  (await app`select distinct fn, who from public.lookalike_ran order by fn`).map((r) => `${r.fn} as ${r.who}`);

test("the look-alikes work for whoever calls them: the ones planted here would be picked", async () => {
  const a = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    // As the superuser, with the untyped parameters postgres.js sends, and the catalog's types.
    await a`select pg_try_advisory_lock(${1}, ${2})`;
    await a.unsafe("select 1 from pg_catalog.pg_class where oid = 1259 and relname !~ '^x'");
    expect(await ran()).toEqual([
      "!~(name,name) as postgres",
      "=(oid,int4) as postgres",
      "postgres.pg_try_advisory_lock as postgres",
    ]);
  } finally {
    await a.end();
    await app`delete from public.lookalike_ran`;
  }
});

test("status, backup, migrate, recover and its undo, as a superuser, call none of them", async () => {
  expect(await shinkei(["status"], env)).toSucceed();
  await takeBackup(env);
  expect(await shinkei(["migrate"], env)).toSucceed();
  const before = await digest(app, "alice@example.com");
  await deleteWorld(app, "alice@example.com", "alice@example.com world 2");
  const r = await shinkei(["recover", "--user", "alice@example.com", "--yes", "--confirm-database", db.name], env);
  expect(r).toSucceed();
  expect(await digest(app, "alice@example.com")).toEqual(before);
  const undo = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
  expect(undo).toSucceed();
  expect(await ran()).toEqual([]);
});

test("the app's triggers fire during recover and its undo with the app's rights, not the superuser's", async () => {
  // Its own code, on its own tables: it runs when shinkei writes them, as whoever writes them.
  await app.unsafe(`
    CREATE TABLE public.trigger_ran (op text, who text, super boolean);
    GRANT SELECT, INSERT ON public.trigger_ran TO PUBLIC;
    CREATE FUNCTION public.who_writes() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
      INSERT INTO public.trigger_ran SELECT TG_OP, current_user, r.rolsuper FROM pg_catalog.pg_roles r
       WHERE r.rolname = current_user;
      RETURN NULL;
    END $f$;
    CREATE TRIGGER who_writes AFTER INSERT OR UPDATE OR DELETE ON public.stories
      FOR EACH ROW EXECUTE FUNCTION public.who_writes();`);
  try {
    await takeBackup(env);
    await deleteWorld(app, "bob@example.com", "bob@example.com world 1");
    await app`delete from public.trigger_ran`;
    const r = await shinkei(["recover", "--user", "bob@example.com", "--yes", "--confirm-database", db.name], env);
    expect(r).toSucceed();
    const undo = await shinkei(["recover", "--undo", recordOf(r.stdout), "--yes", "--confirm-database", db.name], env);
    expect(undo).toSucceed();
    const fired = await app<{ op: string; super: boolean }[]>`select op, super from public.trigger_ran`;
    // The trial and the apply inserted bob's two stories, the undo deleted them: never as a superuser.
    expect(new Set(fired.map((f) => f.op))).toEqual(new Set(["INSERT", "DELETE"]));
    expect(fired.filter((f) => f.super)).toEqual([]);
  } finally {
    await app.unsafe("drop trigger who_writes on public.stories; drop function public.who_writes()");
    await app.unsafe("drop table public.trigger_ran");
  }
});

test("a view in place of schema_migrations is not read: status and backup stop, naming it", async () => {
  await app.unsafe(`
    ALTER TABLE public.schema_migrations RENAME TO schema_migrations_real;
    CREATE VIEW public.schema_migrations AS
      SELECT * FROM public.schema_migrations_real WHERE (SELECT true FROM public.lookalike_mark('view'));`);
  try {
    for (const args of [["status"], ["backup"]]) {
      const r = await shinkei(args, env);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("public.schema_migrations is not a table (relkind v): it was not read");
    }
    expect(await ran()).toEqual([]);
  } finally {
    await app.unsafe(`DROP VIEW public.schema_migrations;
      ALTER TABLE public.schema_migrations_real RENAME TO schema_migrations`);
  }
});

/** Undo the newest migration as the app's role, so that one is pending again. */
async function unapplyNewest() {
  const newest = migrations.at(-1)!;
  await app.unsafe(newest.down!);
  await app`delete from public.schema_migrations where version = ${newest.version}`;
  return newest;
}

test("migrate as a superuser writes the live tables as the app's role: its trigger runs unprivileged", async () => {
  const newest = await unapplyNewest();
  await app.unsafe(`
    CREATE FUNCTION public.migration_recorded() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
      IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        PERFORM public.lookalike_mark('schema_migrations trigger');
      END IF;
      RETURN NULL;
    END $f$;
    CREATE TRIGGER migration_recorded AFTER INSERT ON public.schema_migrations
      FOR EACH ROW EXECUTE FUNCTION public.migration_recorded();`);
  try {
    expect(await shinkei(["migrate"], env)).toSucceed();
    const [row] = await app`select pg_catalog.max(version) as v from public.schema_migrations`;
    expect(row!.v).toBe(newest.version);
    expect(await ran()).toEqual([]);
  } finally {
    await app.unsafe("DROP TRIGGER migration_recorded ON public.schema_migrations");
    await app.unsafe("DROP FUNCTION public.migration_recorded()");
  }
});

test("migrations change public's tables, not those of a schema named after whoever runs them", async () => {
  // The app's role made a schema "postgres" (searched first, as "$user", by a session of the
  // superuser's with the default search path) holding tables named as the newest migration's.
  const newest = await unapplyNewest();
  await app.unsafe("CREATE TABLE postgres.mail_outbox (x int); CREATE TABLE postgres.schema_migrations (x int)");
  const columns = async (schema: string) =>
    (
      await app`select c.relname || '.' || a.attname as col from pg_catalog.pg_attribute a
        join pg_catalog.pg_class c on c.oid = a.attrelid join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       where n.nspname = ${schema} and a.attnum > 0 and not a.attisdropped order by 1`
    ).map((r) => r.col as string);
  const theirs = await columns("postgres");
  // Not through connect() (whose login sets the path): the migrations' own SET LOCAL is what is tested.
  const raw = postgres(db.url, { max: 1, onnotice: () => {} });
  try {
    expect((await raw`select current_schemas(false)::text as s`)[0]!.s).toBe("{postgres,public}");
    expect((await migrate(raw)).map((m) => m.version)).toEqual([newest.version]);
    expect(await columns("postgres")).toEqual(theirs);
    const [row] = await app`select pg_catalog.max(version) as v from public.schema_migrations`;
    expect(row!.v).toBe(newest.version);
  } finally {
    await raw.end();
    await app.unsafe("DROP TABLE postgres.mail_outbox, postgres.schema_migrations");
  }
});

test("a search path the app's role set on the database (public before pg_catalog) changes nothing", async () => {
  // ALTER DATABASE ... SET, which the owner may do, is every new session's default: with public
  // first, even a look-alike of a signature pg_catalog has (oid = oid) would win.
  await app.unsafe(`
    CREATE FUNCTION public.oideq(a oid, b oid) RETURNS boolean LANGUAGE plpgsql AS $f$
    BEGIN ${mark("=(oid,oid)")} RETURN a OPERATOR(pg_catalog.=) b; END $f$;
    CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.oideq);`);
  await app.unsafe(`ALTER DATABASE ${db.name} SET search_path = public, pg_catalog`);
  try {
    // Without postgres.js's type query on connect: its join of pg_type on oid = oid would call the
    // look-alike (a PL/pgSQL function) for every pair of rows, about 8 s of the server's CPU.
    const a = postgres(db.url, { max: 1, onnotice: () => {}, fetch_types: false });
    try {
      await a.unsafe("select 1 from pg_catalog.pg_class c where c.oid = 1259::oid");
    } finally {
      await a.end();
    }
    expect(await ran()).toEqual(["=(oid,oid) as postgres"]);
    await app`delete from public.lookalike_ran`;
    expect(await shinkei(["status"], env)).toSucceed();
    await takeBackup(env);
    expect(await shinkei(["migrate"], env)).toSucceed();
    // A restore's own connections too: the load's role planned, made and dropped, the lock, the load.
    expect(await shinkei(["backup", "--restore", "--yes", "--confirm-database", db.name], env)).toSucceed();
    expect(await ran()).toEqual([]);
  } finally {
    await app.unsafe(`ALTER DATABASE ${db.name} RESET search_path`);
    await app.unsafe("DROP OPERATOR public.= (oid, oid); DROP FUNCTION public.oideq(oid, oid)");
  }
});

test("a restore, as a superuser, calls none of them either (its lock, its checks, its counts)", async () => {
  const restored = await shinkei(["backup", "--restore", "--yes", "--confirm-database", db.name], env);
  expect(restored).toSucceed();
  // The backup held the look-alikes: they are back, and were never called.
  expect(await ran()).toEqual([]);
  const [row] = await app`select count(*)::int as n from pg_catalog.pg_proc where proname = 'lookalike_mark'`;
  expect(row!.n).toBe(1);
});
