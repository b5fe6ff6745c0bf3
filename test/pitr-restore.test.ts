import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { chmod, chown, mkdir, readdir, rm, stat } from "node:fs/promises";
import { existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { tempDir } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { fakeInstance } from "./support/instance.ts";
import { receiverFlushed } from "./support/wal.ts";
import { shinkei } from "./support/cli.ts";
import { type DamagedArchive, damagedArchive, insertLsnOf, statsOf } from "./support/pitr-archive.ts";
import type { Sql } from "../src/pg/db.ts";
import { tableStats, type TableStats } from "../src/backup/digest.ts";
import { walStore } from "../src/wal/offsite.ts";
import { loadConfig } from "../src/config/index.ts";

/*
 * Which state pitr restore reaches, and from where: the target and the window, the WAL's sources
 * (local, being received, off-site), the base backup, the key, and cleanup of scratch instances.
 * What becomes of a recovered state is in pitr-restore-results.test.ts: the two files run side by
 * side under bun test --parallel, each on an archive of its own.
 */

// Real clusters, real WAL, real recoveries through the compiled binary: each one takes seconds.
setDefaultTimeout(120_000);

let archive: DamagedArchive | undefined;
let sql: Sql;
/** Where scratch instances go (TMPDIR of every shinkei run here): empty after every test. */
let scratchRoot: string;
let env: Record<string, string>;
/** The moment between the writes and the deletes, and the state the database had then. */
let noted: string;
let notedLsn: string;
let before: TableStats;

const leftovers = async () => (await readdir(scratchRoot)).filter((n) => n.startsWith("shinkei-"));
const insertLsn = () => insertLsnOf(sql);

beforeAll(async () => {
  archive = await damagedArchive();
  ({ sql, scratchRoot, env, noted, notedLsn, before } = archive);
});
afterAll(() => archive?.stop());

describe("pitr restore", () => {
  test("to the noted time: rows and the dropped table as they were, replayed from the segment in receipt", async () => {
    const r = await shinkei(["pitr", "restore", "--to", noted, "--json"], env);
    expect(r.stderr).toContain("replaying WAL to");
    expect(r).toSucceed();
    const out = JSON.parse(r.stdout);
    try {
      expect(out.url).toMatch(/^postgres:\/\/postgres:[^@]+@127\.0\.0\.1:\d+\/shinkei$/);
      const got = await statsOf(out.url);
      expect(got.counts).toEqual(before.counts);
      expect(got.digests).toEqual(before.digests);
      // The last replayed commit is the one before the target: the writes, not the delete.
      expect(Date.parse(out.reached.commitTime)).toBeLessThan(Date.parse(noted));
      expect(out.reached.distanceMs).toBeGreaterThan(200);
      expect(out.reached.distanceMs).toBeLessThan(5_000);
      expect(out.reached.lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
      expect(out.reached.stopped).toContain("recovery stopping before commit");
      // Nothing was switched: the writes live only in the segment pg_receivewal is still writing.
      expect(out.walSources.receiving).toBeGreaterThanOrEqual(1);
      // The base backup's own segment is sealed: fetched ahead into the stage from the start.
      expect(out.walStaged).toBeGreaterThanOrEqual(1);
      expect(out.walStaged).toBeLessThan(out.walFiles);
      expect(out.counts.users).toBe(0);
      // The instance is kept, listed and removed by pitr cleanup.
      expect(await leftovers()).toHaveLength(1);
      if (process.getuid?.() === 0) {
        // Run as root, the server's OS user owns only what it writes; every path we write through is ours.
        const root = join(scratchRoot, (await leftovers())[0]!);
        const mode = async (p: string) => ({
          uid: (await stat(join(root, p))).uid,
          mode: (await stat(join(root, p))).mode & 0o7777,
        });
        const server = Number(Bun.spawnSync(["id", "-u", "postgres"]).stdout.toString());
        expect(await mode(".")).toEqual({ uid: 0, mode: 0o711 });
        expect(await mode("wal")).toEqual({ uid: 0, mode: 0o710 });
        expect(await mode("stage")).toEqual({ uid: 0, mode: 0o1770 });
        expect(await mode("client")).toEqual({ uid: 0, mode: 0o755 });
        expect((await mode("data")).uid).toBe(server);
      }
      // The scratch server (and what it runs: restore_command) gets no secret in its environment.
      const root = join(scratchRoot, (await leftovers())[0]!);
      const pid = Number((await Bun.file(join(root, "data", "postmaster.pid")).text()).split("\n")[0]);
      const environ = (await Bun.file(`/proc/${pid}/environ`).text()).split("\0").map((kv) => kv.split("=")[0]);
      expect(environ).toContain("PATH");
      for (const secret of [
        "DATABASE_URL",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "BACKUP_AGE_IDENTITY",
        "BACKUP_AGE_RECIPIENTS",
      ])
        expect(environ).not.toContain(secret);
    } finally {
      const c = await shinkei(["pitr", "cleanup"], env);
      expect(c).toSucceed();
      expect(c.stdout).toContain("removed");
    }
    expect(await leftovers()).toEqual([]);
  });

  test("to latest: the damage is there too; a TMPDIR with a space, a quote and a % in it is no problem", async () => {
    // restore_command and postgresql.auto.conf carry these paths: shell, %-placeholders, conf quoting.
    const odd = join(scratchRoot, "it's 100% here");
    await mkdir(odd);
    await chmod(odd, 0o755);
    const r = await shinkei(["pitr", "restore", "--to", "latest", "--stop", "--json"], { ...env, TMPDIR: odd });
    await rm(odd, { recursive: true, force: true });
    expect(r).toSucceed();
    expect(JSON.parse(r.stdout).walStaged).toBeGreaterThanOrEqual(1);
    const out = JSON.parse(r.stdout);
    expect(out.counts).toBeDefined();
    expect(Date.parse(out.reached.commitTime)).toBeGreaterThan(Date.parse(noted));
    expect(await leftovers()).toEqual([]);
  });

  test("a TMPDIR too deep for a socket path: the sockets go to a short folder, removed with the instance", async () => {
    // The server's socket, <TMPDIR>/shinkei-pitr-instance-XXXXXX/sockets/.s.PGSQL.<port>, would pass
    // the 107 bytes a unix socket path may have whatever scratchRoot is: PostgreSQL would refuse to start.
    const deep = join(scratchRoot, "a-folder-so-deep-that-a-unix-socket-path-under-it-is-too-long");
    await mkdir(deep);
    await chmod(deep, 0o755);
    const deepEnv = { ...env, TMPDIR: deep };
    const inDeep = async () => (await readdir(deep)).filter((n) => n.startsWith("shinkei-"));
    try {
      const r = await shinkei(["pitr", "restore", "--to", "latest", "--json"], deepEnv);
      expect(r).toSucceed();
      const [instance] = await inDeep();
      const state = JSON.parse(await Bun.file(join(deep, instance!, "instance.json")).text());
      const sockets = dirname(state.socketDir);
      expect(dirname(sockets)).toBe("/tmp");
      expect(basename(sockets)).toStartWith("shinkei-pitr-sockets-");
      expect(existsSync(join(state.socketDir, `.s.PGSQL.${state.port}`))).toBe(true);
      if (process.getuid?.() === 0) {
        // The same parts and modes as inside the instance's folder: ours, the server's user only passes.
        expect((await stat(sockets)).mode & 0o7777).toBe(0o711);
        expect((await stat(join(sockets, "wal"))).mode & 0o7777).toBe(0o710);
        expect((await stat(state.socketDir)).uid).toBe(
          Number(Bun.spawnSync(["id", "-u", "postgres"]).stdout.toString()),
        );
      }
      expect((await statsOf(JSON.parse(r.stdout).url)).counts).toBeDefined();
      // pitr cleanup finds the instance under the deep TMPDIR and removes its sockets' folder too.
      const c = await shinkei(["pitr", "cleanup", "--json"], deepEnv);
      expect(c).toSucceed();
      expect(JSON.parse(c.stdout).removed).toHaveLength(1);
      expect(existsSync(sockets)).toBe(false);
      expect(await inDeep()).toEqual([]);
    } finally {
      await shinkei(["pitr", "cleanup"], deepEnv);
      await rm(deep, { recursive: true, force: true });
    }
  });

  test("a target after the last commit (nothing since): the whole archive replays, which is that state", async () => {
    // WAL without a commit: the window reaches past the target, no commit follows it.
    await sql`select pg_logical_emit_message(false, 'shinkei-test', 'quiet')`;
    await Bun.sleep(300);
    const quiet = new Date().toISOString();
    await Bun.sleep(300);
    await sql`select pg_logical_emit_message(false, 'shinkei-test', 'still quiet')`;
    await receiverFlushed(sql, await insertLsn());
    const r = await shinkei(["pitr", "restore", "--to", quiet, "--json"], env);
    expect(r.stderr).toContain("the archive holds no commit after the target");
    expect(r).toSucceed();
    const out = JSON.parse(r.stdout);
    try {
      expect(out.replayedAll).toBe(true);
      expect(Date.parse(out.reached.commitTime)).toBeLessThan(Date.parse(quiet));
      expect(out.reached.distanceMs).toBeGreaterThan(0);
      const got = await statsOf(out.url);
      expect(got.digests).toEqual((await sql.begin((tx) => tableStats(tx))).digests);
    } finally {
      expect(await shinkei(["pitr", "cleanup"], env)).toSucceed();
    }
    expect(await leftovers()).toEqual([]);
  });

  test("for a person: each step on stderr, what was reached, the counts, the URL and what to do next", async () => {
    const r = await shinkei(["pitr", "restore", "--to", noted], env);
    try {
      expect(r).toSucceed();
      for (const step of ["unpacking base backup", "checking its SHA-256", "starting PostgreSQL", "replaying WAL to"])
        expect(r.stderr).toContain(step);
      expect(r.stdout).toMatch(
        /^reached    LSN [0-9A-F]+\/[0-9A-F]+, last replayed commit \S+, [\d.]+m?s before the target$/m,
      );
      expect(r.stdout).toMatch(/^stopped    recovery stopping before commit of transaction \d+, time /m);
      expect(r.stdout).toMatch(/^users\s+0$/m);
      expect(r.stdout).toMatch(/^running    postgres:\/\/postgres:\S+@127\.0\.0\.1:\d+\/shinkei$/m);
      expect(r.stdout).toContain(`shinkei pitr restore --to "${noted}" --apply`);
    } finally {
      const c = await shinkei(["pitr", "cleanup", "--json"], env);
      expect(JSON.parse(c.stdout).removed).toHaveLength(1);
    }
    expect(await leftovers()).toEqual([]);
  });

  test("targets before and after the window are refused, naming it; nothing is started", async () => {
    const early = await shinkei(["pitr", "restore", "--to", "2001-02-03T04:05:06Z"], env);
    expect(early.code).toBe(1);
    expect(early.stderr).toMatch(
      /2001-02-03T04:05:06\.000Z is before the recoverable window \d{4}-\d\d-\d\dT[\d:.]+Z \.\. \d{4}/,
    );
    const late = await shinkei(["pitr", "restore", "--to", new Date(Date.now() + 3_600_000).toISOString()], env);
    expect(late.code).toBe(1);
    expect(late.stderr).toContain("is after the recoverable window");
    const bad = await shinkei(["pitr", "restore", "--to", "yesterday-ish"], env);
    expect(bad.code).toBe(2);
    expect(await leftovers()).toEqual([]);
  });

  test("pitr commands remove instances over a day old; a fresh one stays, one naming elsewhere is kept", async () => {
    const fake = (name: string, createdAt: Date, root?: string) =>
      fakeInstance(join(scratchRoot, name), {
        createdAt: createdAt.toISOString(),
        bin: "",
        ...(root ? { root, dataDir: join(root, "data") } : {}),
      });
    const old = await fake("shinkei-pitr-instance-old111", new Date(Date.now() - 2 * 86_400_000));
    const fresh = await fake("shinkei-pitr-instance-new111", new Date());
    const victim = await tempDir("pitr-not-ours");
    const hostile = await fake("shinkei-pitr-instance-bad111", new Date(Date.now() - 2 * 86_400_000), victim);
    const r = await shinkei(["pitr", "restore", "--to", "not-a-time"], env);
    expect(r.code).toBe(2);
    expect(await Bun.file(join(old, "instance.json")).exists()).toBe(false);
    expect(await Bun.file(join(fresh, "instance.json")).exists()).toBe(true);
    expect(await Bun.file(join(hostile, "instance.json")).exists()).toBe(true);
    expect((await stat(victim)).isDirectory()).toBe(true);
    const c = await shinkei(["pitr", "cleanup", "--json"], env);
    expect(JSON.parse(c.stdout).removed.map((x: { root: string }) => x.root)).toEqual([fresh]);
    await rm(hostile, { recursive: true });
    expect(await leftovers()).toEqual([]);
  });

  test("cleanup signals only a server on the instance's own data directory, and skips others' folders", async () => {
    const fake = (name: string) => fakeInstance(join(scratchRoot, name));
    // A postmaster.pid naming some other live process (stale after a reboot, or planted): never killed.
    const bystander = Bun.spawn(["sleep", "60"]);
    const stale = await fake("shinkei-pitr-instance-pid111");
    await Bun.write(join(stale, "data", "postmaster.pid"), `${bystander.pid}\n`);
    const c = await shinkei(["pitr", "cleanup", "--json"], env);
    expect(c).toSucceed();
    expect(JSON.parse(c.stdout).removed.map((x: { root: string }) => x.root)).toEqual([stale]);
    expect(bystander.exitCode).toBeNull();
    expect(bystander.killed).toBe(false);
    bystander.kill();
    if (process.getuid?.() === 0) {
      // A folder another user made, however it names itself, is not ours to stop or remove.
      const foreign = await fake("shinkei-pitr-instance-other1");
      const uid = Number(Bun.spawnSync(["id", "-u", "postgres"]).stdout.toString());
      for (const p of [foreign, join(foreign, "instance.json")]) await chown(p, uid, uid);
      const again = await shinkei(["pitr", "cleanup", "--json"], env);
      expect(JSON.parse(again.stdout).removed).toEqual([]);
      expect(await Bun.file(join(foreign, "instance.json")).exists()).toBe(true);
      await rm(foreign, { recursive: true });
    }
    expect(await leftovers()).toEqual([]);
  });

  test("without the identity the encrypted archive is refused clearly, nothing is left", async () => {
    const r = await shinkei(["pitr", "restore", "--to", noted, "--stop"], { ...env, BACKUP_AGE_IDENTITY: "" });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("no key to open it is configured");
    expect(await leftovers()).toEqual([]);
  });

  test("from the off-site copy alone: an empty BACKUP_DIR recovers the same state from S3", async () => {
    const empty = await tempDir("pitr-empty");
    // The partial being received is copied every WAL_PARTIAL_UPLOAD_INTERVAL; S3 times are whole seconds.
    const store = walStore(loadConfig(env))!;
    await until(
      "the partial with the writes copied off-site",
      async () => {
        // A little WAL (no table changes), so the receiver writes and the uploader copies again.
        await sql`select pg_logical_emit_message(false, 'shinkei-test', 'tick')`;
        await Bun.sleep(200);
        return (await store.list()).some(
          (o) => o.name.endsWith(".partial.json") && o.modifiedAt.getTime() > Date.parse(noted) + 1000,
        );
      },
      30_000,
    );
    const r = await shinkei(["pitr", "restore", "--to", noted, "--json"], { ...env, BACKUP_DIR: empty });
    expect(r.stderr).toContain("downloading base backup");
    expect(r).toSucceed();
    const out = JSON.parse(r.stdout);
    try {
      expect(out.window.source).toBe("offsite");
      expect(out.walSources.local ?? 0).toBe(0);
      expect(out.walSources.receiving ?? 0).toBe(0);
      // The writes are in the segment still being received: its sealed off-site copy.
      expect(out.walSources.partial).toBeGreaterThanOrEqual(1);
      const got = await statsOf(out.url);
      expect(got.digests).toEqual(before.digests);
    } finally {
      expect(await shinkei(["pitr", "cleanup"], env)).toSucceed();
    }
    expect(await leftovers()).toEqual([]);
  });

  test("with a newer base backup, the one ending before the target is used; --to-lsn reaches it too", async () => {
    const first = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout).baseBackups[0].file;
    expect(await shinkei(["backup", "base"], env)).toSucceed();
    const r = await shinkei(["pitr", "restore", "--to", noted, "--stop", "--json"], env);
    expect(r).toSucceed();
    expect(JSON.parse(r.stdout).base).toBe(first);
    const l = await shinkei(["pitr", "restore", "--to-lsn", notedLsn, "--json"], env);
    expect(l).toSucceed();
    const out = JSON.parse(l.stdout);
    try {
      expect(out.base).toBe(first);
      expect((await statsOf(out.url)).digests).toEqual(before.digests);
    } finally {
      expect(await shinkei(["pitr", "cleanup"], env)).toSucceed();
    }
    expect(await leftovers()).toEqual([]);
  });
});
