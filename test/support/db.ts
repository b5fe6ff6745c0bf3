import postgres from "postgres";
import { connect, type Sql } from "../../src/pg/db.ts";

/** The server tests use: TEST_DATABASE_URL when set, otherwise the local default. */
export const serverUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

export function urlFor(database: string, server = serverUrl): string {
  const u = new URL(server);
  u.pathname = `/${database}`;
  return u.toString();
}

export type TestDatabase = { name: string; url: string; sql: Sql; drop(): Promise<void> };

function admin(server = serverUrl) {
  return postgres(server, { max: 1, onnotice: () => {} });
}

/**
 * A new, empty database of this test file's own; `drop()` removes it and anything connected to it.
 * `server`: another server than the shared one (a test cluster), for a file that checks what is on the whole server.
 * `template`: a copy of that database (one a file migrated and filled once), instead of an empty one.
 */
export async function freshDatabase(label = "t", server = serverUrl, template?: string): Promise<TestDatabase> {
  const name = `shinkei_test_${label}_${crypto.randomUUID().slice(0, 8)}`.toLowerCase().replace(/[^a-z0-9_]/g, "_");
  const a = admin(server);
  try {
    if (template) await a`create database ${a(name)} template ${a(template)}`;
    else await a`create database ${a(name)}`;
  } finally {
    await a.end();
  }
  const url = urlFor(name, server);
  const sql = connect(url, { max: 4 });
  return {
    name,
    url,
    sql,
    async drop() {
      await sql.end({ timeout: 1 });
      await dropDatabase(name, server);
    },
  };
}

export async function dropDatabase(name: string, server = serverUrl) {
  const a = admin(server);
  try {
    await a`drop database if exists ${a(name)} with (force)`;
  } finally {
    await a.end();
  }
}

export async function databaseExists(name: string): Promise<boolean> {
  const a = admin();
  try {
    const rows = await a`select 1 from pg_database where datname = ${name}`;
    return rows.length > 0;
  } finally {
    await a.end();
  }
}

/** Every row of every app table, ordered, for "exactly as before" comparisons. */
export async function snapshot(sql: Sql): Promise<Record<string, unknown[]>> {
  const out: Record<string, unknown[]> = {};
  for (const t of ["users", "sessions", "worlds", "stories", "story_beats"]) {
    out[t] = await sql.unsafe(`select * from ${t} order by id`);
  }
  return out;
}
