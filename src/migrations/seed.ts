import type { Queryable } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";

/** Demo accounts; their passwords are public on purpose (README), so never seed production. */
export const demoUsers = [
  { email: "alice@example.com", name: "Alice", password: "shinkei-demo-alice" },
  { email: "bob@example.com", name: "Bob", password: "shinkei-demo-bob" },
  { email: "carol@example.com", name: "Carol", password: "shinkei-demo-carol" },
] as const;

const worlds = [
  {
    name: "Ashfall",
    description: "A continent under a sky of slow-falling ash.",
    stories: ["The Lantern Road", "Glass Harvest"],
  },
  {
    name: "Tidewright",
    description: "Islands that move with the moon.",
    stories: ["Salt and Iron", "The Drowned Bell"],
  },
];

const beats = [
  "The stranger arrives at dusk, carrying a sealed letter.",
  "An old map is found in the lining of a coat.",
  "The bridge is out; the long way round begins.",
  "A promise is made that cannot be kept.",
  "Morning brings an answer nobody wanted.",
];

/** Load the demo data. Refuses a database that already has users: seeding never mixes with real data. */
export async function seedDemo(sql: Queryable, options: { memoryCost?: number; timeCost?: number } = {}) {
  // Called in a transaction: until it commits, nobody registers (a registration waits), so the count
  // below stays true, and a second seed waits, then finds the users. Reads (logins) go on.
  await sql`lock table public.users in share row exclusive mode`;
  const [existing] = await sql`select count(*)::int as n from users`;
  if (existing!.n > 0) {
    throw new ShinkeiError(
      "DATABASE_NOT_EMPTY",
      `the database already has ${existing!.n} user(s); seed only loads into an empty one`,
      {
        hint: "Use shinkei reset to start over (it takes a backup first).",
      },
    );
  }
  const ids: string[] = [];
  for (const u of demoUsers) {
    const hash = await Bun.password.hash(u.password, {
      algorithm: "argon2id",
      memoryCost: options.memoryCost ?? 65536,
      timeCost: options.timeCost ?? 2,
    });
    const [user] =
      await sql`insert into users (email, name, password_hash) values (${u.email}, ${u.name}, ${hash}) returning id`;
    ids.push(user!.id);
    for (const w of worlds) {
      const [world] =
        await sql`insert into worlds (owner_id, name, description) values (${user!.id}, ${w.name}, ${w.description})
          returning id`;
      for (const title of w.stories) {
        const [story] = await sql`insert into stories (world_id, title, summary)
            values (${world!.id}, ${title}, ${"A story of " + w.name}) returning id`;
        await sql`insert into story_beats
          ${sql(beats.map((content, position) => ({ story_id: story!.id, position, content })))}`;
      }
    }
  }
  // Demo addresses receive no mail: count them verified, so REQUIRE_EMAIL_VERIFICATION cannot lock
  // them out. (A database not yet migrated that far has no such column, and nothing to do.)
  const [column] = await sql`select 1 from pg_catalog.pg_attribute
    where attrelid = pg_catalog.to_regclass('public.users')::oid and attname = 'email_verified_at'
      and not attisdropped`;
  if (column) await sql`update users set email_verified_at = now() where id = any(${sql.array(ids)}::uuid[])`;
}
