import { join } from "node:path";
import type { Sql } from "../../src/pg/db.ts";
import { writeIdentity } from "../../src/storage/crypt.ts";
import { tempDir } from "./fixtures.ts";
import { takeBackup } from "./cli.ts";
import { freshDatabase } from "./db.ts";
import { migrate } from "../../src/migrations/migrate.ts";

/** What the recover tests (recover.test.ts, recover-undo.test.ts) write, delete and compare. */

/**
 * Encryption with a new X25519 key pair in a fresh folder: a passphrase would cost a second of scrypt
 * for every backup, safety copy and record sealed or opened, and no recover test is about passphrases.
 */
export async function ageKeys(): Promise<{ BACKUP_AGE_RECIPIENTS: string; BACKUP_AGE_IDENTITY: string }> {
  const key = join(await tempDir("recover-key"), "age.key");
  return { BACKUP_AGE_RECIPIENTS: await writeIdentity(key), BACKUP_AGE_IDENTITY: key };
}

/** A user with `worlds` worlds of two stories of three beats each. */
export async function writer(sql: Sql, email: string, worlds = 2) {
  const [u] =
    await sql`insert into users (email, name, password_hash) values (${email}, ${email.split("@")[0]!}, 'hash')
      returning id`;
  for (let w = 1; w <= worlds; w++) {
    const [world] =
      await sql`insert into worlds (owner_id, name) values (${u!.id}, ${`${email} world ${w}`}) returning id`;
    for (let s = 1; s <= 2; s++) {
      const [story] =
        await sql`insert into stories (world_id, title) values (${world!.id}, ${`story ${s}`}) returning id`;
      await sql`insert into story_beats (story_id, position, content) select ${story!.id}, i, 'beat ' || i
        from generate_series(0, 2) i`;
    }
  }
  await sql`insert into sessions (token_hash, user_id, expires_at)
    values (${Buffer.from(crypto.getRandomValues(new Uint8Array(32)))}, ${u!.id}, now() + interval '1 day')`;
  return u!.id as string;
}

/** Every world, story and beat of one owner, as text, hashed: "exactly as before" in one value. */
export async function digest(sql: Sql, email: string): Promise<{ rows: number; md5: string }> {
  const [r] = await sql`
    with u as (select id from users where lower(email) = lower(${email})),
    w as (select * from worlds where owner_id in (select id from u)),
    s as (select * from stories where world_id in (select id from w)),
    b as (select * from story_beats where story_id in (select id from s)),
    x as (select w::text t from w union all select s::text from s union all select b::text from b)
    select count(*)::int as rows, coalesce(md5(string_agg(t, '|' order by t)), '') as md5 from x`;
  return r as { rows: number; md5: string };
}

export async function deleteWorld(sql: Sql, email: string, name: string) {
  await sql.begin(async (tx) => {
    const [w] = await tx`select w.id from worlds w join users u on u.id = w.owner_id where lower(u.email) = ${email}
        and w.name = ${name}`;
    await tx`delete from story_beats where story_id in (select id from stories where world_id = ${w!.id})`;
    await tx`delete from stories where world_id = ${w!.id}`;
    await tx`delete from worlds where id = ${w!.id}`;
  });
}

/** The record a recovery wrote, from its "undo with" line. */
export const recordOf = (stdout: string) =>
  /^undo with\s+shinkei recover --undo (\S+) --yes --confirm-database \S+$/m.exec(stdout)![1]!;

/** Bob creating worlds one after another until stopped: how many he made. */
export function keepWriting(sql: Sql, email: string) {
  let stop = false;
  let made = 0;
  const done = (async () => {
    const [u] = await sql`select id from users where email = ${email}`;
    while (!stop) {
      await sql`insert into worlds (owner_id, name) values (${u!.id}, ${`busy ${made}`})`;
      made++;
    }
  })();
  return async () => {
    stop = true;
    await done;
    return made;
  };
}

export const busyWorlds = async (sql: Sql) =>
  (await sql`select count(*)::int as n from worlds where name like 'busy %'`)[0]!.n as number;

export const aliceBeat = async (sql: Sql, story: string, position: number) =>
  (
    await sql`select b.* from story_beats b join stories s on s.id = b.story_id join worlds w on w.id = s.world_id
    join users u on u.id = w.owner_id where u.email = 'alice@example.com' and w.name = 'alice@example.com world 1'
      and s.title = ${story} and b.position = ${position}`
  )[0];

/**
 * A file's starting state on `server`: a database holding alice's and bob's rows, whose name is the
 * template each test copies (freshDatabase), and a backup of it.
 */
export async function startingState(server: string): Promise<{ template: string; backup: string }> {
  const start = await freshDatabase("recover_start", server);
  await migrate(start.sql);
  await writer(start.sql, "alice@example.com");
  await writer(start.sql, "bob@example.com");
  await start.sql.end();
  const backup = await takeBackup({ DATABASE_URL: start.url, BACKUP_DIR: await tempDir("recover-start") });
  return { template: start.name, backup };
}
