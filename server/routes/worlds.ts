import { Hono } from "hono";
import type { AppEnv, Deps } from "../env.ts";
import { requireSession } from "../middleware/session.ts";

/** The signed-in user's worlds with their story counts: "is my data still there?" in one call. */
export function worldRoutes({ sql, auth }: Deps) {
  return new Hono<AppEnv>().get("/", requireSession(sql, auth.sessions), async (c) => {
    const worlds = await sql`
      select w.id, w.name, w.description, w.created_at as "createdAt", count(s.id)::int as "storyCount"
      from worlds w left join stories s on s.world_id = w.id
      where w.owner_id = ${c.get("session").userId}
      group by w.id order by w.created_at, w.id`;
    return c.json({ worlds });
  });
}
