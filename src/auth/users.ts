import type { Queryable, Sql } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";

export type User = { id: string; email: string; name: string; createdAt: Date };
export type UserRow = User & { passwordHash: string };

const columns = (sql: Sql) => sql`id, email, name, created_at as "createdAt"`;

export async function createUser(
  sql: Sql,
  input: { email: string; name: string; passwordHash: string },
): Promise<User> {
  try {
    const [user] = await sql<User[]>`
      insert into users (email, name, password_hash) values (${input.email}, ${input.name}, ${input.passwordHash})
      returning ${columns(sql)}`;
    return user!;
  } catch (e) {
    // The unique index on lower(email) decides races between concurrent registrations.
    if ((e as { code?: string }).code === "23505") {
      throw new ShinkeiError("EMAIL_TAKEN", "an account with this email already exists");
    }
    throw e;
  }
}

export async function findUserByEmail(sql: Sql, email: string): Promise<UserRow | undefined> {
  const [row] = await sql<UserRow[]>`
    select ${columns(sql)}, password_hash as "passwordHash" from users where lower(email) = lower(${email})`;
  return row;
}

export async function findUserById(sql: Sql, id: string): Promise<UserRow | undefined> {
  const [row] = await sql<
    UserRow[]
  >`select ${columns(sql)}, password_hash as "passwordHash" from users where id = ${id}`;
  return row;
}

/** Set the hash; with `old`, only while it is still `old` (whether it was set). */
export async function setPasswordHash(
  sql: Queryable,
  id: string,
  passwordHash: string,
  old?: string,
): Promise<boolean> {
  const r = old
    ? await sql`update users set password_hash = ${passwordHash}, updated_at = now()
        where id = ${id} and password_hash = ${old}`
    : await sql`update users set password_hash = ${passwordHash}, updated_at = now() where id = ${id}`;
  return r.count > 0;
}

/**
 * Replace the hash only if it is still `old`: a password changed meanwhile must not be undone.
 * Whether it was replaced.
 */
export async function replacePasswordHash(
  sql: Queryable,
  id: string,
  old: string,
  passwordHash: string,
): Promise<boolean> {
  const r = await sql`update users set password_hash = ${passwordHash} where id = ${id} and password_hash = ${old}`;
  return r.count > 0;
}

export function publicUser({ id, email, name, createdAt }: User): User {
  return { id, email, name, createdAt };
}
