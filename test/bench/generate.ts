import { connect, type Sql } from "../../src/pg/db.ts";
import { migrate } from "../../src/migrations/migrate.ts";

/**
 * Fill a database with realistic users, worlds, stories and story beats to about `bytes`, with
 * COPY: a user per 100 beats, a world per user, five stories a world, twenty beats a story.
 * Prose is drawn from a small vocabulary, so it compresses about as real prose does.
 */
const words = (
  "the a of and to in was her his she he it that with for as had on at by not they but from this all were be " +
  "when one there an their which would been into said could what so out them who more like than then some time could " +
  "lantern river forest stranger letter road harbor bell iron salt glass harvest winter ash tide island " +
  "moon map coat " +
  "bridge promise morning answer captain sister brother village tower storm shadow ember silver garden mountain"
).split(" ");

let seed = 1;
const rand = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
const prose = (n: number) => Array.from({ length: n }, () => words[rand(words.length)]).join(" ");

async function copy(sql: Sql, table: string, columns: string[], rows: Iterable<string[]>) {
  const writable = await sql.unsafe(`copy ${table} (${columns.join(", ")}) from stdin`).writable();
  let batch = "";
  for (const row of rows) {
    batch += row.join("\t") + "\n";
    if (batch.length > 1 << 20) {
      if (!writable.write(batch)) await new Promise((r) => writable.once("drain", r));
      batch = "";
    }
  }
  await new Promise<void>((resolve, reject) => writable.end(batch, (e?: Error | null) => (e ? reject(e) : resolve())));
}

export async function generate(url: string, bytes: number): Promise<{ users: number; beats: number }> {
  const sql = connect(url, { max: 2 });
  try {
    await migrate(sql);
    const users = Math.max(1, Math.round(bytes / 500 / 100));
    const ids = Array.from({ length: users }, () => crypto.randomUUID());
    await copy(
      sql,
      "users",
      ["id", "email", "name", "password_hash"],
      ids.map((id, i) => [id, `user${i}@example.com`, `User ${i}`, `$argon2id$v=19$m=65536,t=2,p=1$${id}`]),
    );
    await copy(
      sql,
      "worlds",
      ["id", "owner_id", "name", "description"],
      ids.map((id) => [id, id, `World ${prose(2)}`, prose(20)]),
    );
    const stories = ids.flatMap((w) => Array.from({ length: 5 }, () => [crypto.randomUUID(), w]));
    await copy(
      sql,
      "stories",
      ["id", "world_id", "title", "summary"],
      stories.map(([id, w]) => [id!, w!, prose(4), prose(30)]),
    );
    function* beats() {
      for (const [story] of stories) for (let p = 0; p < 20; p++) yield [story!, String(p), prose(30 + rand(50))];
    }
    await copy(sql, "story_beats", ["story_id", "position", "content"], beats());
    await sql`analyze`;
    return { users, beats: stories.length * 20 };
  } finally {
    await sql.end();
  }
}

export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(KB|MB|GB)$/i.exec(text.trim());
  if (!m) throw new Error(`--size takes a size such as 100MB or 1GB, not "${text}"`);
  return Number(m[1]) * { KB: 1e3, MB: 1e6, GB: 1e9 }[m[2]!.toUpperCase() as "KB"]!;
}

if (import.meta.main) {
  const i = process.argv.indexOf("--size");
  const size = parseSize(i > 0 ? (process.argv[i + 1] ?? "") : "100MB");
  const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/shinkei_bench";
  const t = performance.now();
  const r = await generate(url, size);
  console.log(`generated ${r.users} users and ${r.beats} beats in ${((performance.now() - t) / 1000).toFixed(1)}s`);
}
