import type postgres from "postgres";
import type { Queryable, Sql } from "../pg/db.ts";
import { plainTable } from "../pg/tables.ts";

export type CodePurpose = "password_reset" | "verify_email";

/** 24 random bytes, base64url: 192 bits, 32 characters a person can copy from a mail. */
const CODE = /^[A-Za-z0-9_-]{32}$/;

export function hashCode(code: string): Buffer {
  return Buffer.from(new Bun.CryptoHasher("sha256").update(code).digest());
}

/** How many codes of one purpose an account may hold live at once. */
export const LIVE_CODES = 5;

/**
 * A new code for `userId`, valid until `now + ttlMs`; only its hash is stored. Earlier live codes
 * keep working: anyone who knows the address can ask for a code, and a request must not void the
 * one its owner is about to type. With LIVE_CODES live already, none is issued (null): the mailbox
 * holds codes that work, and nobody can fill it with more. One transaction, locked per account, so
 * parallel requests cannot pass the limit together. `alongside` runs in that transaction with the
 * code (to queue the mail that carries it): no code without its mail, no mail without its code.
 */
export async function issueCode(
  sql: Sql,
  input: { userId: string; purpose: CodePurpose; ttlMs: number; now: Date },
  alongside?: (tx: postgres.TransactionSql, code: string, expiresAt: Date) => Promise<void>,
): Promise<string | null> {
  const code = Buffer.from(crypto.getRandomValues(new Uint8Array(24))).toString("base64url");
  const expiresAt = new Date(input.now.getTime() + input.ttlMs);
  return sql.begin(async (tx) => {
    await tx`select 1 from users where id = ${input.userId} for update`;
    await tx`delete from account_codes where user_id = ${input.userId} and purpose = ${input.purpose}
      and expires_at <= ${input.now}`;
    const [live] = await tx<
      { n: number }[]
    >`select count(*)::int as n from account_codes where user_id = ${input.userId} and purpose = ${input.purpose}`;
    if (live!.n >= LIVE_CODES) return null;
    await tx`insert into account_codes (code_hash, user_id, purpose, created_at, expires_at)
             values (${hashCode(code)}, ${input.userId}, ${input.purpose}, ${input.now}, ${expiresAt})`;
    await alongside?.(tx, code, expiresAt);
    return code;
  });
}

/**
 * The account a live code belongs to, when it was issued to `email` for `purpose`; undefined for a
 * malformed, wrong, used, expired or someone else's code alike. Looked up by hash: no comparison
 * of the secret itself whose timing could leak it.
 */
export async function findCodeOwner(
  sql: Queryable,
  input: { email: string; code: string; purpose: CodePurpose; now: Date },
): Promise<string | undefined> {
  if (!CODE.test(input.code)) return undefined;
  const [row] = await sql<{ userId: string }[]>`
    select c.user_id as "userId" from account_codes c join users u on u.id = c.user_id
    where c.code_hash = ${hashCode(input.code)} and c.purpose = ${input.purpose}
      and c.expires_at > ${input.now} and lower(u.email) = lower(${input.email})`;
  return row?.userId;
}

/**
 * Use the code up: delete it (and every other code of this purpose for the account) and return
 * whether it was still there. Two requests racing with one code: exactly one gets true.
 */
export async function consumeCode(
  tx: Queryable,
  input: { userId: string; code: string; purpose: CodePurpose; now: Date },
): Promise<boolean> {
  const r = await tx`delete from account_codes
    where code_hash = ${hashCode(input.code)} and user_id = ${input.userId} and purpose = ${input.purpose}
      and expires_at > ${input.now}`;
  if (r.count === 0) return false;
  await tx`delete from account_codes where user_id = ${input.userId} and purpose = ${input.purpose}`;
  return true;
}

/** Delete expired codes; the server calls this now and then. */
export async function pruneCodes(sql: Sql, now: Date): Promise<number> {
  return (await sql`delete from account_codes where expires_at <= ${now}`).count;
}

/** Unexpired reset codes, for `shinkei status`: a count only, never the rows. */
export async function pendingResetCodes(sql: Queryable): Promise<number | null> {
  if (!(await plainTable(sql, "public.account_codes"))) return null;
  const [row] = await sql`select count(*)::int as n from public.account_codes
    where purpose::text = 'password_reset' and expires_at::timestamptz > pg_catalog.now()`;
  return row!.n;
}
