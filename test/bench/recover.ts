/**
 * Selective recovery of one user who owns 1% of the rows, and its undo, next to a full restore of
 * the same backup (what users did before `recover` existed). The apply (after the confirmation: the
 * rows, their safety copy and the record) must stay a small fraction of a restore at every size:
 * its cost follows the user's rows, not the database. Called by run.ts for each size; runs alone too:
 *   bun run test/bench/recover.ts --size 100MB
 */
import { mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { generate, parseSize } from "./generate.ts";
import {
  arg,
  type BenchRow,
  buildShinkei,
  databaseUrl,
  fmtMs,
  median,
  serverUrl,
  shinkeiBin,
  timed,
  verdict,
} from "./tools.ts";

const OWNER = "user0@example.com";

export async function benchRecover(o: {
  bin: string;
  url: string;
  dir: string;
  size: string;
  runs: number;
  restoreMs: number;
}): Promise<BenchRow[]> {
  const sql = postgres(o.url, { max: 1, onnotice: () => {} });
  const env = { DATABASE_URL: o.url, BACKUP_DIR: o.dir, NO_COLOR: "1" };
  try {
    const [{ n }] = (await sql`select count(*)::int as n from worlds`) as unknown as [{ n: number }];
    await sql`update worlds set owner_id = (select id from users where email = ${OWNER})
      where id in (select id from worlds order by id limit ${Math.max(1, Math.round(n / 100))})`;
    const file = JSON.parse((await timed([o.bin, "backup", "--json"], { env })).stdout).path as string;
    const preview: number[] = [],
      total: number[] = [],
      apply: number[] = [],
      load: number[] = [],
      undoTotal: number[] = [],
      undoApply: number[] = [];
    let beats = 0;
    await sql.begin(async (tx) => {
      const worlds = tx`select w.id from worlds w join users u on u.id = w.owner_id where u.email = ${OWNER}`;
      const stories = tx`select id from stories where world_id in (${worlds})`;
      beats = (await tx`delete from story_beats where story_id in (${stories})`).count;
      await tx`delete from stories where world_id in (${worlds})`;
      await tx`delete from worlds where id in (${worlds})`;
    });
    // Each run recovers the user and undoes it: the undo leaves the loss as it was for the next run.
    for (let i = 0; i < o.runs; i++) {
      const p = await timed([o.bin, "recover", "--user", OWNER, "--from", file, "--dry-run", "--json"], { env });
      preview.push(p.ms);
      const a = await timed(
        [
          o.bin,
          "recover",
          "--user",
          OWNER,
          "--from",
          file,
          "--yes",
          "--confirm-database",
          new URL(o.url).pathname.slice(1),
          "--json",
        ],
        { env },
      );
      const out = JSON.parse(a.stdout) as { loadMs: number; applyMs: number; record: string };
      total.push(a.ms);
      apply.push(out.applyMs);
      load.push(out.loadMs);
      const u = await timed(
        [
          o.bin,
          "recover",
          "--undo",
          out.record,
          "--yes",
          "--confirm-database",
          new URL(o.url).pathname.slice(1),
          "--json",
        ],
        { env },
      );
      undoTotal.push(u.ms);
      undoApply.push((JSON.parse(u.stdout) as { applyMs: number }).applyMs);
    }
    const name = `recover 1% of ${o.size} (${beats} beats)`;
    return [
      {
        group: "recover",
        name: `${name}: preview vs full restore`,
        ours: fmtMs(median(preview)),
        baseline: fmtMs(o.restoreMs),
        ratio: median(preview) / o.restoreMs,
        goal: "",
        met: null,
        raw: { oursMs: median(preview), baselineMs: o.restoreMs },
      },
      {
        group: "recover",
        name: `${name}: of it, loading the backup`,
        ours: fmtMs(median(load)),
        baseline: fmtMs(median(preview)),
        ratio: median(load) / median(preview),
        goal: "dominant",
        met: median(load) >= median(preview) / 2,
        raw: { oursMs: median(load), baselineMs: median(preview) },
      },
      {
        group: "recover",
        name: `${name}: the whole command (load, compare, apply)`,
        ours: fmtMs(median(total)),
        baseline: fmtMs(o.restoreMs),
        ratio: median(total) / o.restoreMs,
        goal: "",
        met: null,
        raw: { oursMs: median(total), baselineMs: o.restoreMs },
      },
      {
        group: "recover",
        name: `${name}: apply (rows + their safety copy, one transaction)`,
        ours: fmtMs(median(apply)),
        baseline: fmtMs(o.restoreMs),
        ratio: median(apply) / o.restoreMs,
        goal: "<= 0.2x",
        met: median(apply) <= 0.2 * o.restoreMs,
        raw: { oursMs: median(apply), baselineMs: o.restoreMs },
      },
      {
        group: "recover",
        name: `${name}: undo, the whole command`,
        ours: fmtMs(median(undoTotal)),
        baseline: fmtMs(o.restoreMs),
        ratio: median(undoTotal) / o.restoreMs,
        goal: "<= 0.2x",
        met: median(undoTotal) <= 0.2 * o.restoreMs,
        raw: { oursMs: median(undoTotal), baselineMs: o.restoreMs },
      },
      {
        group: "recover",
        name: `${name}: undo, the rows (one transaction)`,
        ours: fmtMs(median(undoApply)),
        baseline: fmtMs(o.restoreMs),
        ratio: median(undoApply) / o.restoreMs,
        goal: "<= 0.2x",
        met: median(undoApply) <= 0.2 * o.restoreMs,
        raw: { oursMs: median(undoApply), baselineMs: o.restoreMs },
      },
    ];
  } finally {
    await sql.end();
  }
}

if (import.meta.main) {
  const size = arg("size", "100MB");
  const bin = shinkeiBin;
  const urlFor = (db: string) => databaseUrl(serverUrl, db);
  const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
  const db = `shinkei_bench_recover_${size.toLowerCase()}`;
  const dir = join(tmpdir(), `shinkei-bench-recover-${process.pid}`);
  try {
    await buildShinkei();
    for (const d of [db, `${db}_restore`]) {
      await admin`drop database if exists ${admin(d)} with (force)`;
      await admin`create database ${admin(d)}`;
    }
    await generate(urlFor(db), parseSize(size));
    await mkdir(dir, { recursive: true });
    const file = JSON.parse(
      (await timed([bin, "backup", "--json"], { env: { DATABASE_URL: urlFor(db), BACKUP_DIR: dir } })).stdout,
    ).path as string;
    const restore = await timed(
      [
        bin,
        "backup",
        "restore",
        file,
        "--allow-superuser",
        "--yes",
        "--confirm-database",
        `${db}_restore`,
        "--no-safety-backup",
      ],
      { env: { DATABASE_URL: urlFor(`${db}_restore`), BACKUP_DIR: dir } },
    );
    for (const r of await benchRecover({ bin, url: urlFor(db), dir, size, runs: 1, restoreMs: restore.ms })) {
      const values = `${r.ours.padStart(10)} ${r.baseline.padStart(10)}`;
      const ratio = r.ratio === null ? "" : `${r.ratio.toFixed(2)}x`;
      console.log(`${r.name.padEnd(84)} ${values} ${ratio}  ${r.goal}${r.met === null ? "" : ` ${verdict(r.met)}`}`);
    }
  } finally {
    for (const d of [db, `${db}_restore`]) await admin`drop database if exists ${admin(d)} with (force)`;
    await admin.end();
    await rm(dir, { recursive: true, force: true });
  }
}
