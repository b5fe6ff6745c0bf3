import type { Queryable } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";

export type SlotStatus = {
  name: string;
  active: boolean;
  /** reserved, extended, unreserved or lost (PostgreSQL 13+). */
  walStatus: string | null;
  /** Bytes the server may still write before the slot loses WAL; null when unbounded. */
  safeWalSize: number | null;
  restartLsn: string | null;
};

/** max_slot_wal_keep_size in the server's own words ("-1", "10GB", ...). */
async function maxKeep(sql: Queryable): Promise<string> {
  const [row] = await sql<{ v: string }[]>`select current_setting('max_slot_wal_keep_size') as v`;
  return row!.v;
}

export async function slotStatus(sql: Queryable, name: string): Promise<SlotStatus | null> {
  const [row] = await sql<
    {
      slot_type: string;
      active: boolean;
      wal_status: string | null;
      safe_wal_size: number | null;
      restart_lsn: string | null;
    }[]
  >`
    select slot_type, active, wal_status, safe_wal_size, restart_lsn::text from pg_replication_slots
      where slot_name = ${name}`;
  if (!row) return null;
  if (row.slot_type !== "physical") {
    throw new ShinkeiError(
      "WAL_SLOT_WRONG_TYPE",
      `replication slot "${name}" is a ${row.slot_type} slot; WAL streaming needs a physical one`,
      {
        hint: "Set WAL_SLOT to another name; shinkei creates it.",
      },
    );
  }
  return {
    name,
    active: row.active,
    walStatus: row.wal_status,
    safeWalSize: row.safe_wal_size === null ? null : Number(row.safe_wal_size),
    restartLsn: row.restart_lsn,
  };
}

/**
 * The physical slot the receiver streams through, created when missing. A slot whose receiver is
 * gone keeps WAL on the primary; with max_slot_wal_keep_size unlimited that is until the disk is
 * full and every write stops, so creating one there is refused.
 */
export async function ensureSlot(sql: Queryable, name: string): Promise<{ created: boolean; status: SlotStatus }> {
  const existing = await slotStatus(sql, name);
  if (existing) return { created: false, status: existing };
  const keep = await maxKeep(sql);
  if (keep === "-1") {
    throw new ShinkeiError(
      "WAL_SLOT_UNBOUNDED",
      `refusing to create replication slot "${name}": the server's max_slot_wal_keep_size is -1 ` +
        `(unlimited), so a stopped receiver would make the primary keep WAL until its disk is full`,
      {
        hint:
          "Add `max_slot_wal_keep_size = 10GB` (what the primary's disk can spare) to postgresql.conf and " +
          "run SELECT pg_reload_conf(); or set WAL_SLOT=none to stream without a slot and accept that gaps " +
          "can happen.",
        details: { setting: "max_slot_wal_keep_size", value: keep },
      },
    );
  }
  try {
    // Reserve WAL now: from this moment nothing the receiver has not flushed is recycled.
    await sql`select pg_catalog.pg_create_physical_replication_slot(${name}::name, true)`;
  } catch (e) {
    if ((e as { code?: string }).code !== "42710") throw e; // another service created it first: fine
  }
  return { created: true, status: (await slotStatus(sql, name))! };
}
