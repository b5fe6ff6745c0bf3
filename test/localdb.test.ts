import { afterAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import postgres from "postgres";
import { ensureLocalCluster, type LocalCluster } from "../src/pg/localdb.ts";
import { tempDir } from "./support/fixtures.ts";
import { initTrustCluster } from "./support/cluster.ts";

const running: LocalCluster[] = [];
afterAll(async () => {
  await Promise.all(running.map((c) => c.stop()));
});

/** A project folder the postgres user can reach when the tests run as root. */
async function projectRoot(label: string): Promise<string> {
  const root = await tempDir(label);
  await chmod(root, 0o755);
  return root;
}

async function canLogIn(url: string): Promise<string> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    const [r] = await sql`select current_user as who`;
    return r!.who as string;
  } catch (e) {
    return (e as { code?: string }).code ?? (e as Error).message;
  } finally {
    await sql.end({ timeout: 1 });
  }
}

function withoutPassword(url: string): string {
  const u = new URL(url);
  u.password = "";
  return u.toString();
}

test("in production the local cluster is never started, and nothing is created", async () => {
  const root = await projectRoot("localdb-prod");
  const attempt = ensureLocalCluster(root, process.env, "production").then((c) => (running.push(c), c));
  await expect(attempt).rejects.toMatchObject({
    code: "DB_UNREACHABLE",
    message: expect.stringContaining("in production shinkei never starts a database of its own"),
  });
  expect(existsSync(join(root, "data"))).toBe(false);
});

test("a new local cluster takes a generated password, kept with mode 0600; without it nobody logs in", async () => {
  const root = await projectRoot("localdb-new");
  const cluster = await ensureLocalCluster(root, process.env);
  running.push(cluster);
  expect(cluster.started).toBe(true);
  const file = join(root, "data", "postgres.password");
  expect((await stat(file)).mode & 0o777).toBe(0o600);
  const password = (await readFile(file, "utf8")).trim();
  expect(password.length).toBeGreaterThanOrEqual(32);
  expect(new URL(cluster.url).password).toBe(password);
  expect(await canLogIn(cluster.url.replace(/\/shinkei$/, "/postgres"))).toBe("postgres");
  expect(await canLogIn(withoutPassword(cluster.url).replace(/\/shinkei$/, "/postgres"))).toBe("28P01");
  const hba = await readFile(join(cluster.dataDir, "pg_hba.conf"), "utf8");
  expect(hba.split("\n").filter((l) => !l.startsWith("#") && /\btrust\b/.test(l))).toEqual([]);
  // A second run joins it with the same password.
  const again = await ensureLocalCluster(root, process.env);
  expect(again.started).toBe(false);
  expect(again.url).toBe(cluster.url);
});

test("a cluster an older version made with trust gets a password and loses trust", async () => {
  const root = await projectRoot("localdb-legacy");
  const dataDir = join(root, "data", "postgres");
  await mkdir(join(root, "data"), { mode: 0o755 });
  // Not synced to disk: what it stands for is an older cluster's settings, not its durability.
  await initTrustCluster(dataDir, ["--no-sync"]);

  const cluster = await ensureLocalCluster(root, process.env);
  running.push(cluster);
  expect((await stat(join(root, "data", "postgres.password"))).mode & 0o777).toBe(0o600);
  expect(await canLogIn(cluster.url.replace(/\/shinkei$/, "/postgres"))).toBe("postgres");
  expect(await canLogIn(withoutPassword(cluster.url).replace(/\/shinkei$/, "/postgres"))).toBe("28P01");
});
