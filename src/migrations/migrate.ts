import { ShinkeiError } from "../errors.ts";
import { actAsDatabaseOwner, recreatePublicSchema, type LockHandle, type Queryable, type Sql } from "../pg/db.ts";
import { withMaintenanceLock } from "../pg/lock.ts";
import { checkedCommit } from "../pg/transaction.ts";
import { plainTable } from "../pg/tables.ts";
import { migrations as bundled, type Migration } from "./index.ts";

export type Applied = { version: number; name: string; checksum: string; applied_at: Date };
export type MigrationStatus = {
  current: number;
  latest: number;
  applied: Applied[];
  pending: Migration[];
};

export function checksum(text: string): string {
  return new Bun.CryptoHasher("sha256").update(text).digest("hex");
}

const migrationsTable = `
  create table if not exists schema_migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
  )`;

/**
 * The migrations' SQL names the app's tables unqualified, meaning public's: not those of a schema
 * named after the role that runs it (searched first, as "$user"), which would take its new
 * columns and tables. pg_catalog is still searched first.
 */
const ONLY_PUBLIC = "SET LOCAL search_path = public";

async function readApplied(sql: Sql): Promise<Applied[]> {
  if (!(await plainTable(sql, "public.schema_migrations"))) return [];
  return sql<Applied[]>`select version::int4 as version, name::text as name, checksum::text as checksum,
    applied_at::timestamptz as applied_at from public.schema_migrations order by 1`;
}

/** Compare what the database has applied with what this build carries; refuse edited or unknown history. */
function plan(applied: Applied[], list: readonly Migration[]): MigrationStatus {
  const byVersion = new Map(list.map((m) => [m.version, m]));
  for (const a of applied) {
    const m = byVersion.get(a.version);
    if (!m) {
      throw new ShinkeiError(
        "MIGRATION_UNKNOWN",
        `the database has migration ${a.version} (${a.name}), which this build does not know`,
        {
          hint: "The database was migrated by a newer shinkei; run that version instead.",
        },
      );
    }
    if (checksum(m.up) !== a.checksum) {
      throw new ShinkeiError(
        "MIGRATION_CHANGED",
        `migration ${a.version} (${a.name}) was changed after it was applied`,
        {
          hint: "Applied migrations are history: restore the original file and add a new migration for the change.",
        },
      );
    }
  }
  const done = new Set(applied.map((a) => a.version));
  return {
    current: applied.at(-1)?.version ?? 0,
    latest: list.at(-1)?.version ?? 0,
    applied,
    pending: list.filter((m) => !done.has(m.version)),
  };
}

export async function migrationStatus(sql: Sql, list: readonly Migration[] = bundled): Promise<MigrationStatus> {
  return plan(await readApplied(sql), list);
}

/**
 * Apply pending migrations in order, each in its own transaction, under the maintenance lock:
 * concurrent runs (several replicas starting at once) queue, so each migration is applied once,
 * and none runs in the middle of a backup or restore. With nothing pending, no lock is taken.
 */
export async function migrate(sql: Sql, list: readonly Migration[] = bundled): Promise<Migration[]> {
  if (plan(await readApplied(sql), list).pending.length === 0) return [];
  return withMaintenanceLock(
    sql,
    "migration",
    async (lock) => {
      // As the database's owner, whoever runs it: the backend (the app role) and the backup service
      // (a member of it) both migrate on start, and whichever comes first must leave tables the other
      // may use (a schema owned by the backup role locks the app out of its own tables).
      await sql.begin(async (tx) => {
        await tx.unsafe(actAsDatabaseOwner);
        await tx.unsafe(ONLY_PUBLIC);
        await tx.unsafe(migrationsTable);
      });
      const { pending } = plan(await readApplied(sql), list);
      for (const m of pending) {
        try {
          // Committed only while the lock is held; an error from here means nothing of it was
          // applied, except COMMIT_UNKNOWN, which says how to find out.
          await checkedCommit(
            sql,
            async (tx) => {
              await tx.unsafe(actAsDatabaseOwner);
              await tx.unsafe(ONLY_PUBLIC);
              await tx.unsafe(m.up);
              await tx`insert into public.schema_migrations (version, name, checksum)
                values (${m.version}, ${m.name}, ${checksum(m.up)})`;
            },
            { what: `migration ${m.version} (${m.name})`, lock },
          );
        } catch (error) {
          if (error instanceof ShinkeiError && error.code === "COMMIT_UNKNOWN") throw error;
          throw new ShinkeiError(
            "MIGRATION_FAILED",
            `migration ${m.version} (${m.name}) failed: ${(error as Error).message}`,
            {
              hint: "Nothing of this migration was applied; earlier ones stay applied.",
              cause: error,
            },
          );
        }
      }
      return pending;
    },
    true,
  );
}

/**
 * Undo the newest applied migration, unguarded: undoNewestMigration is the way in. Committed only
 * while `lock` (the maintenance lock its caller holds) is still held; it throws only with nothing
 * undone, or COMMIT_UNKNOWN (checkedCommit).
 */
export async function migrateDown(
  sql: Sql,
  list: readonly Migration[] = bundled,
  options: { lock?: LockHandle } = {},
): Promise<Migration | null> {
  const { applied } = plan(await readApplied(sql), list);
  const last = applied.at(-1);
  if (!last) return null;
  const m = list.find((x) => x.version === last.version)!;
  if (!m.down) {
    throw new ShinkeiError("MIGRATION_IRREVERSIBLE", `migration ${m.version} (${m.name}) has no down step`);
  }
  await checkedCommit(
    sql,
    async (tx) => {
      await tx.unsafe(actAsDatabaseOwner);
      await tx.unsafe(ONLY_PUBLIC);
      await tx.unsafe(m.down!);
      await tx`delete from public.schema_migrations where version = ${m.version}`;
    },
    { what: `undo of migration ${m.version} (${m.name})`, lock: options.lock },
  );
  return m;
}

/**
 * Empty the `public` schema and apply every migration inside the caller's transaction, so a reset
 * either ends with a fresh schema or changes nothing at all.
 */
export async function rebuildSchema(tx: Queryable, list: readonly Migration[] = bundled): Promise<void> {
  const [server] = await tx`select current_setting('server_version_num')::int as num`;
  // A reset run by the backup service's role leaves the app's tables to the app (see migrate).
  await tx.unsafe(actAsDatabaseOwner);
  await tx.unsafe(ONLY_PUBLIC);
  await tx.unsafe(recreatePublicSchema(server!.num));
  await tx.unsafe(migrationsTable);
  for (const m of list) {
    await tx.unsafe(m.up);
    await tx`insert into public.schema_migrations (version, name, checksum)
      values (${m.version}, ${m.name}, ${checksum(m.up)})`;
  }
}
