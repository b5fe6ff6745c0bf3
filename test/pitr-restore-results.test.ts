import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { chmod, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { startClusterFrom, type TestCluster } from "./support/cluster.ts";
import { pathWith, seedSample, tempDir, wrapTool } from "./support/fixtures.ts";
import { until } from "./support/wait.ts";
import { receiverFlushed } from "./support/wal.ts";
import { binaryPath, shinkei } from "./support/cli.ts";
import { type DamagedArchive, damagedArchive, insertLsnOf, statsOf } from "./support/pitr-archive.ts";
import type { Sql } from "../src/pg/db.ts";
import { tableStats, type TableStats } from "../src/backup/digest.ts";
import { loadConfig } from "../src/config/index.ts";
import { pitrDrillProblem, readPitrDrills } from "../src/pitr/drill.ts";
import { startPitrDrills } from "../src/service/drills.ts";
import { codecOf, sealTo, unsealFrom } from "../src/storage/seal.ts";
import { parseLsn, segmentName, segnoOf } from "../src/wal/segments.ts";
import { Readable } from "node:stream";

/*
 * What becomes of a recovered state: written into the live database (pitr restore --apply, recover
 * --at for one user's rows), handed over as a data directory (--into-dir), or compared with the live
 * one (pitr drills). Which state a restore reaches, and from where, is in pitr-restore.test.ts: the
 * two files run side by side under bun test --parallel, each on an archive of its own.
 */

// Real clusters, real WAL, real recoveries through the compiled binary: each one takes seconds.
setDefaultTimeout(120_000);

let archive: DamagedArchive | undefined;
let cluster: TestCluster;
let sql: Sql;
let dir: string;
let key: string;
/** Where scratch instances go (TMPDIR of every shinkei run here): empty after every test. */
let scratchRoot: string;
let env: Record<string, string>;
/** The moment between the writes and the deletes, and the state the database had then. */
let noted: string;
let before: TableStats;

const leftovers = async () => (await readdir(scratchRoot)).filter((n) => n.startsWith("shinkei-"));
const insertLsn = () => insertLsnOf(sql);

beforeAll(async () => {
  archive = await damagedArchive();
  ({ cluster, sql, dir, key, scratchRoot, env, noted, before } = archive);
});
afterAll(() => archive?.stop());

describe("pitr restore", () => {
  test("--apply with a wrong confirmation changes nothing and starts nothing", async () => {
    const now = await sql.begin((tx) => tableStats(tx));
    const r = await shinkei(
      ["pitr", "restore", "--to", noted, "--apply", "--yes", "--confirm-database", "shinkei_prod"],
      env,
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('does not name the target database "shinkei"');
    expect(await sql.begin((tx) => tableStats(tx))).toEqual(now);
    expect(await leftovers()).toEqual([]);
  });

  test("--apply SIGKILLed during the load changes nothing, and its scratch instance goes away", async () => {
    const now = await sql.begin((tx) => tableStats(tx));
    // The dump of the scratch instance (not of the live server) ends with a statement that takes a
    // while to load (the whole dump is judged before anything runs), so the kill lands before COMMIT.
    const wrap = await wrapTool(
      "pg_dump",
      `if [ -z "$PGPORT" ] || [ "$PGPORT" = "${cluster.port}" ]; then exec "$REAL" "$@"; fi\n"$REAL" "$@" ` +
        `&& echo "CREATE MATERIALIZED VIEW public.slow_to_load AS SELECT pg_catalog.pg_sleep(8)::text AS ` +
        `slept;"`,
    );
    // The server notices a vanished client within 100 ms even mid-statement, instead of only when the
    // slow one ends: the kill still lands before COMMIT, and the test does not wait out the sleep.
    await sql`alter database shinkei set client_connection_check_interval = '100ms'`;
    try {
      const p = Bun.spawn(
        [binaryPath, "pitr", "restore", "--to", noted, "--apply", "--yes", "--confirm-database", "shinkei"],
        {
          env: { ...env, PATH: pathWith(wrap), HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1" },
          stdout: "pipe",
          stderr: "pipe",
        },
      );
      let err = "";
      (async () => {
        for await (const c of p.stderr) err += new TextDecoder().decode(c);
      })();
      await until("the load to start", async () => err.includes("loading the recovered state"), 90_000);
      await until(
        "the load to have the dump",
        async () =>
          (
            await sql`select 1 from pg_stat_activity where application_name = 'shinkei restore (load)'
              and datname = 'shinkei' and query like '%slow_to_load%'`
          ).length > 0,
        30_000,
      );
      p.kill("SIGKILL");
      await p.exited;
      // The server sees its client gone at its next check (without one, once the slow statement ends).
      await until(
        "the loading session to end",
        async () =>
          (
            await sql`select 1 from pg_stat_activity where application_name = 'shinkei restore (load)'
              and datname = 'shinkei'`
          ).length === 0,
        30_000,
      );
    } finally {
      await sql`alter database shinkei reset client_connection_check_interval`;
    }
    expect(await sql.begin((tx) => tableStats(tx))).toEqual(now);
    await until("the watchdog to remove the scratch instance", async () => (await leftovers()).length === 0, 30_000);
  });

  test("--apply: the live database gets exactly the recovered state, after a safety backup", async () => {
    const r = await shinkei(
      ["pitr", "restore", "--to", noted, "--apply", "--yes", "--confirm-database", "shinkei"],
      env,
    );
    expect(r.stderr).not.toContain("✖");
    expect(r).toSucceed();
    expect(r.stdout).toContain("every table's count and content digest match the recovered instance");
    const safety = /safety backup\s+(\S+)/.exec(r.stdout)![1]!;
    expect(await Bun.file(safety).exists()).toBe(true);
    const now = await sql.begin((tx) => tableStats(tx));
    expect(now.counts).toEqual(before.counts);
    expect(now.digests).toEqual(before.digests);
    expect(await leftovers()).toEqual([]);
  });

  test("--into-dir: the recovered data directory, stopped, its settings back, starts as its own server", async () => {
    const parent = await tempDir("pitr-into");
    await chmod(parent, 0o755);
    const target = join(parent, "recovered");
    const r = await shinkei(["pitr", "restore", "--to", noted, "--into-dir", target], env);
    expect(r.stderr).not.toContain("✖");
    expect(r).toSucceed();
    expect(r.stdout).toContain(`pg_ctl -D ${target}`);
    expect(await leftovers()).toEqual([]);
    expect(await Bun.file(join(target, "recovery.signal")).exists()).toBe(false);
    expect(await Bun.file(join(target, "postgresql.auto.conf")).text()).not.toContain("restore_command");
    const server = await startClusterFrom(target, { removeOnStop: parent });
    try {
      const got = await statsOf(server.url("shinkei"));
      expect(got.digests).toEqual(before.digests);
    } finally {
      await server.stop();
    }
    // An existing folder is never overwritten.
    const again = await shinkei(["pitr", "restore", "--to", noted, "--into-dir", scratchRoot], env);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("already exists");
    expect(await leftovers()).toEqual([]);
  });
});

/** CRC-32C as PostgreSQL computes it over a WAL record: the data after the header, then the header up to the CRC. */
const crcTable = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function recordCrc(rec: Uint8Array): number {
  let c = 0xffffffff;
  for (const part of [rec.subarray(24), rec.subarray(0, 20)])
    for (const b of part) c = crcTable[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

describe("pitr drills", () => {
  test("a drill passes: restore point, state compared, RTO recorded, shown by pitr status and check", async () => {
    expect(await pitrDrillProblem(loadConfig(env))).toContain("no point-in-time recovery drill has passed yet");
    await sql`insert into notes (body) values ('during the drill')`;
    const r = await shinkei(["pitr", "drill", "--json"], env);
    expect(r.stderr).not.toContain("✖");
    expect(r).toSucceed();
    const d = JSON.parse(r.stdout);
    expect(d).toMatchObject({ passed: true, differences: [] });
    expect(d.restorePoint).toMatch(/^shinkei_drill_/);
    expect(d.rtoMs).toBeGreaterThan(0);
    const s = JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout);
    expect(s.lastDrill).toMatchObject({ passed: true, restorePoint: d.restorePoint, rtoMs: d.rtoMs });
    expect(await pitrDrillProblem(loadConfig(env))).toBeNull();
    expect(await pitrDrillProblem(loadConfig({ ...env, BACKUP_DRILL_MAX_AGE: "1ms" }))).toContain(
      "older than BACKUP_DRILL_MAX_AGE",
    );
    expect(await leftovers()).toEqual([]);
  });

  test("a drill SIGKILLed while it recovers leaves no scratch instance or folder behind", async () => {
    const p = Bun.spawn([binaryPath, "pitr", "drill"], {
      env: { ...env, PATH: process.env.PATH!, HOME: process.env.HOME ?? "/tmp" },
      stdout: "ignore",
      stderr: "pipe",
    });
    let err = "";
    (async () => {
      for await (const c of p.stderr) err += new TextDecoder().decode(c);
    })();
    await until("the drill to start its instance", async () => err.includes("replaying WAL to"), 60_000);
    p.kill("SIGKILL");
    await p.exited;
    await until("the watchdog to remove the drill's instance", async () => (await leftovers()).length === 0, 30_000);
  });

  test("the drill schedule runs drills (one service per slot); a base backup adds none once drills exist", async () => {
    const config = loadConfig({ ...env, PITR_DRILL_SCHEDULE: "*/2 * * * * *" });
    // In this process too, scratch instances go where the test looks for leftovers.
    const tmp = process.env.TMPDIR;
    process.env.TMPDIR = scratchRoot;
    const lines: Record<string, unknown>[] = [];
    const count = async () => (await readPitrDrills(dir)).length;
    const before = await count();
    const drills = startPitrDrills({ sql, config, log: (l) => void lines.push(l) });
    try {
      const done = await until(
        "a scheduled drill",
        async () => lines.find((l) => l.msg === "pitr drill passed" || l.msg === "pitr drill failed"),
        60_000,
      );
      expect(done).toMatchObject({ msg: "pitr drill passed", differences: [] });
      expect(Number(done.rtoMs)).toBeGreaterThan(0);
    } finally {
      await drills.stop();
      if (tmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = tmp;
    }
    const after = await count();
    expect(after).toBeGreaterThan(before);
    await drills.afterBaseBackup();
    expect(await count()).toBe(after);
    expect(await leftovers()).toEqual([]);
  });

  test("a drill fails on a segment altered with valid checksums (CRC, SHA-256s redone): content differs", async () => {
    await sql`select pg_switch_wal()`;
    const marker = `marker-${crypto.randomUUID()}`;
    const from = await insertLsn();
    await sql`insert into notes (body) values (${marker})`;
    const to = await insertLsn();
    await sql`select pg_switch_wal()`;
    const name = segmentName(1, segnoOf(parseLsn(from)));
    const walDir = join(dir, "wal", "00000001");
    await until("the segment archived", () => Bun.file(join(walDir, `${name}.json`)).exists(), 30_000);

    const recordPath = join(walDir, `${name}.json`);
    const rec = await Bun.file(recordPath).json();
    const age = { recipients: [], identityFile: key };
    const wal = Buffer.concat(
      await Array.fromAsync(
        await unsealFrom(join(walDir, rec.file), { encryption: rec.encryption, age, name: rec.file }),
      ),
    );
    const seg = 16 * 1024 * 1024;
    let changed = 0;
    for (let p = Number(parseLsn(from) % BigInt(seg)) & ~7; p < Number(parseLsn(to) % BigInt(seg)); p += 8) {
      const len = wal.readUInt32LE(p);
      if (len < 24 || (p % 8192) + len > 8192 || recordCrc(wal.subarray(p, p + len)) !== wal.readUInt32LE(p + 20))
        continue;
      const body = wal.subarray(p, p + len);
      for (let i = body.indexOf(marker); i >= 0; i = body.indexOf(marker, i + 1)) {
        body.write("X", i + marker.length - 1);
        changed++;
      }
      if (changed) {
        wal.writeUInt32LE(recordCrc(body), p + 20);
        break;
      }
    }
    expect(changed).toBeGreaterThan(0);
    const stored = join(walDir, rec.file);
    await rm(stored);
    const sealed = await sealTo(Readable.from([wal]), `${stored}.tmp`, {
      codec: codecOf(rec.file),
      age: { recipients: [env.BACKUP_AGE_RECIPIENTS!] },
      plainHash: true,
    });
    await rename(`${stored}.tmp`, stored);
    await Bun.write(
      recordPath,
      JSON.stringify({
        ...rec,
        sha256: sealed.sha256,
        sizeBytes: sealed.sizeBytes,
        originalSha256: sealed.plainSha256,
      }),
    );

    const r = await shinkei(["pitr", "drill", "--json"], env);
    expect(r.code).toBe(1);
    const d = JSON.parse(r.stdout);
    expect(d.passed).toBe(false);
    expect(d.differences).toEqual(["notes: content differs from the restore point's"]);
    expect(JSON.parse((await shinkei(["pitr", "status", "--json"], env)).stdout).lastDrill.passed).toBe(false);
    expect(await leftovers()).toEqual([]);
  });
});

describe("recover --at: one user's rows as they were at a moment", () => {
  test("alice's world comes back from the WAL archive; bob's newer world stays; no scratch instance left", async () => {
    expect(await shinkei(["migrate"], env)).toSucceed();
    await seedSample(sql, "pitr", 2); // pitr1@example.com and pitr2@example.com, a world each
    const owner = (email: string) => sql`select id from users where email = ${email}`;
    const [alice] = await owner("pitr1@example.com");
    const [bob] = await owner("pitr2@example.com");
    const aliceRows =
      () => sql`select w.name, s.title, b.position, b.content from worlds w join stories s on s.world_id = w.id
        join story_beats b on b.story_id = s.id
      where w.owner_id = ${alice!.id} order by 1, 2, 3`;
    const kept = await aliceRows();
    expect(kept.length).toBe(10);
    await Bun.sleep(300);
    const at = (
      await sql<
        { t: string }[]
      >`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`
    )[0]!.t;
    await Bun.sleep(300);
    // The loss: alice's world and everything in it; meanwhile bob starts a new world.
    await sql.begin(async (tx) => {
      await tx`delete from story_beats where story_id in (select s.id from stories s join worlds w on w.id = s.world_id
        where w.owner_id = ${alice!.id})`;
      await tx`delete from stories where world_id in (select id from worlds where owner_id = ${alice!.id})`;
      await tx`delete from worlds where owner_id = ${alice!.id}`;
    });
    await sql`insert into worlds (owner_id, name) values (${bob!.id}, 'made after the moment')`;
    await receiverFlushed(sql, await insertLsn());

    const r = await shinkei(
      ["recover", "--user", "pitr1@example.com", "--at", at, "--yes", "--confirm-database", "shinkei"],
      env,
    );
    expect(r.stderr).not.toContain("✖");
    expect(r).toSucceed();
    expect(await aliceRows()).toEqual(kept);
    expect(
      (await sql`select 1 from worlds where owner_id = ${bob!.id} and name = 'made after the moment'`).length,
    ).toBe(1);
    expect(await leftovers()).toEqual([]);
    // Its undo is the rows it brought back, from its record: alice's loss again, bob's world kept.
    const undo = await shinkei(
      [
        "recover",
        "--undo",
        /^undo with\s+shinkei recover --undo (\S+) --yes --confirm-database shinkei$/m.exec(r.stdout)![1]!,
        "--yes",
        "--confirm-database",
        "shinkei",
      ],
      env,
    );
    expect(undo.stderr).toBe("");
    expect(undo).toSucceed();
    expect(undo.stdout).toMatch(/^removed\s+worlds 1, stories \d+, story_beats 10$/m);
    expect((await aliceRows()).length).toBe(0);
    expect(
      (await sql`select 1 from worlds where owner_id = ${bob!.id} and name = 'made after the moment'`).length,
    ).toBe(1);
  });

  test("SIGTERM while the moment is being recovered: exit 130, nothing changed, no scratch instance left", async () => {
    const rows = () => sql`select count(*)::int as n from worlds`;
    const before = await rows();
    const at = (
      await sql<
        { t: string }[]
      >`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`
    )[0]!.t;
    await Bun.sleep(300);
    await sql`delete from worlds where name = 'made after the moment'`;
    await receiverFlushed(sql, await insertLsn());
    const p = Bun.spawn(
      [binaryPath, "recover", "--user", "pitr2@example.com", "--at", at, "--yes", "--confirm-database", "shinkei"],
      { env: { PATH: process.env.PATH!, ...env }, stdout: "ignore", stderr: "pipe" },
    );
    await until("the scratch instance", async () => (await leftovers()).length === 1, 30_000);
    p.kill("SIGTERM");
    const exited = await Promise.race([p.exited, Bun.sleep(30_000).then(() => "still running")]);
    if (exited === "still running") p.kill("SIGKILL");
    expect(exited).toBe(130);
    expect(await new Response(p.stderr).text()).toContain("cancelled");
    expect((await rows())[0]!.n).toBe(before[0]!.n - 1);
    await until("the scratch instance to be gone", async () => (await leftovers()).length === 0, 10_000);
  });
});
