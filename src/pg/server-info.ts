import type { Queryable } from "./db.ts";

export type ServerInfo = { versionNum: number; major: number; segmentBytes: number };

/** The server's version and WAL segment size: what picks the streaming tools and names segments. */
export async function serverInfo(sql: Queryable): Promise<ServerInfo> {
  const [row] = await sql<{ num: number; seg: number }[]>`
    select current_setting('server_version_num')::int as num,
           (select setting::int * case unit when '8kB' then 8192 when 'MB' then 1048576 else 1 end from pg_settings
             where name = 'wal_segment_size') as seg`;
  return { versionNum: row!.num, major: Math.floor(row!.num / 10000), segmentBytes: Number(row!.seg) };
}
