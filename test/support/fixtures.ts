import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Sql } from "../../src/pg/db.ts";

const made: string[] = [];

/**
 * The temp directory the run was started with: read as this module loads, which the preload does
 * before it moves TMPDIR to a folder of the run's on tmpfs. What outlives the run (the initdb cache) stays here.
 */
export const startTempDir = tmpdir();

/** A new folder in the temp directory; the preload removes it after the file's last test. */
export async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `shinkei-${label}-`));
  made.push(dir);
  return dir;
}

/** Remove every folder tempDir made in this process; what cannot go (a mount a failed test left) is named. */
export async function removeTempDirs(): Promise<void> {
  for (const dir of made.splice(0)) {
    await rm(dir, { recursive: true, force: true }).catch((e) =>
      console.warn(`temp folder ${dir} not removed: ${(e as Error).message}`),
    );
  }
}

/** A real full disk needs a small file system: a tmpfs of `size` mounted on `dir`, where this machine lets us. */
export async function mountTmpfs(dir: string, size: string): Promise<boolean> {
  const p = Bun.spawn(["mount", "-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { stdout: "pipe", stderr: "pipe" });
  return (await p.exited) === 0;
}

/** Whether mountTmpfs works here (root, and a machine that permits it): tried once on a probe folder. */
export async function canMountTmpfs(): Promise<boolean> {
  if (process.getuid?.() !== 0 || !Bun.which("mount")) return false;
  const probe = await tempDir("tmpfs-probe");
  const ok = await mountTmpfs(probe, "1m");
  if (ok) await Bun.spawn(["umount", probe]).exited;
  await rm(probe, { recursive: true, force: true });
  return ok;
}

/** A folder with a fake `tool` that runs `script` (sh), to put first on PATH: real faults, real binaries. */
export async function wrapTool(tool: string, script: string): Promise<string> {
  const dir = await tempDir(`wrap-${tool}`);
  const real = Bun.which(tool)!;
  await writeFile(join(dir, tool), `#!/bin/sh\nREAL=${real}\n${script}\n`);
  await chmod(join(dir, tool), 0o755);
  return dir;
}

export const pathWith = (dir: string) => `${dir}:${process.env.PATH}`;

/** A small but complete data set: users, worlds, stories, beats, a session. */
export async function seedSample(sql: Sql, tag = "s", size = 3) {
  const users = await sql`insert into users (email, name, password_hash)
    select ${tag} || i || '@example.com', 'User ' || i, 'hash-' || i from generate_series(1, ${size}) i returning id`;
  for (const u of users) {
    const [w] =
      await sql`insert into worlds (owner_id, name, description) values (${u.id}, ${"World " + tag}, 'a place')
        returning id`;
    const stories =
      await sql`insert into stories (world_id, title) select ${w!.id}, 'Story ' || i from generate_series(1, 2) i
        returning id`;
    for (const s of stories) {
      await sql`insert into story_beats (story_id, position, content)
        select ${s.id}, i, 'beat ' || i || ' of ' || ${tag} from generate_series(0, 4) i`;
    }
  }
  await sql`insert into sessions (token_hash, user_id, expires_at)
    values (${Buffer.from(crypto.getRandomValues(new Uint8Array(32)))}, ${users[0]!.id}, now() + interval '1 day')`;
}
