import { afterAll, beforeAll, describe, expect, test, setDefaultTimeout } from "bun:test";
import { chmod, copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { join } from "node:path";
import { shinkei } from "./support/cli.ts";
import { pathWith, tempDir, wrapTool } from "./support/fixtures.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { until } from "./support/wait.ts";
import { fakeInstance } from "./support/instance.ts";
import { receiverFlushed, startBackupService, streamingEnv } from "./support/wal.ts";
import { Service } from "./support/process.ts";
import { TestS3 } from "./support/s3.ts";
import { walStore } from "../src/wal/offsite.ts";
import { connect, type Sql } from "../src/pg/db.ts";
import { loadConfig } from "../src/config/index.ts";
import { unsealFrom } from "../src/storage/seal.ts";
import { baseDir, listBaseBackups, signBaseManifest, writeBaseManifest, type BaseManifest } from "../src/wal/base.ts";
import { recordPath, walRoot, type WalRecord } from "../src/wal/archive.ts";
import { scrubSettings } from "../src/pitr/settings.ts";
import { pruneWalLocal } from "../src/wal/prune.ts";
import { readInstanceFile } from "../src/pitr/instance.ts";
import { archiveSource } from "../src/metrics/sources.ts";
import { readPitrSnapshot, readSnapshot } from "../src/metrics/snapshot.ts";
import { statusView } from "../src/metrics/view.ts";
import { writeIdentity } from "../src/storage/crypt.ts";
import {
  archiveTrust,
  describeUntrusted,
  readSpoolSignature,
  spoolSignaturePath,
  type SpoolSignature,
} from "../src/wal/trust.ts";

// A real cluster, a real receiver and real recoveries through the compiled binary.
setDefaultTimeout(180_000);

const KEY = "a manifest key of the trust tests, long enough";
let scratchRoot: string;
let cluster: TestCluster;
let service: Service | undefined;
let sql: Sql;
let dir: string;
let env: Record<string, string>;
/** A folder the server's OS user can write to: where a planted command would leave its mark. */
let markDir: string;
let legit: BaseManifest;
let s3: TestS3;

beforeAll(async () => {
  scratchRoot = await tempDir("pitr-trust-scratch");
  await chmod(scratchRoot, 0o755);
  markDir = await tempDir("pitr-trust-mark");
  await chmod(markDir, 0o777);
  cluster = await startCluster();
  s3 = await TestS3.start();
  dir = await tempDir("pitr-trust");
  // A key pair, not a passphrase: each passphrase seal or unseal costs a second of CPU (scrypt), and
  // the archiver seals every segment and recovery unseals each. What is checked here is the signing.
  const key = join(scratchRoot, "age.key");
  const recipient = await writeIdentity(key);
  await chmod(key, 0o644); // recovery's wal-fetch runs as the server's OS user
  env = streamingEnv(cluster.url("shinkei"), dir, {
    BACKUP_AGE_RECIPIENTS: recipient,
    BACKUP_AGE_IDENTITY: key,
    BACKUP_MANIFEST_KEY: KEY,
    TMPDIR: scratchRoot,
    WAL_PARTIAL_UPLOAD_INTERVAL: "1s",
    ...s3.env("trust/"),
  });
  service = await startBackupService(env);
  sql = connect(cluster.url("shinkei"), { max: 2 });
  expect(await shinkei(["backup", "base"], env)).toSucceed();
  await sql`create table notes (id serial primary key, body text not null)`;
  await sql`insert into notes (body) select 'note ' || i from generate_series(1, 20) i`;
  const lsn = (await sql<{ lsn: string }[]>`select pg_current_wal_insert_lsn()::text as lsn`)[0]!.lsn;
  await receiverFlushed(sql, lsn);
  legit = (await listBaseBackups(dir))[0]!.manifest;
  // The archiver seals the base's first segment: the window needs it.
  await until("the base's first segment sealed", async () =>
    Bun.file(recordPath(walRoot(dir), legit.timeline, legit.startSegment)).exists(),
  );
  // ... and copied off-site with the base backup.
  const store = walStore(loadConfig(env))!;
  await until("the base and its first segment off-site", async () => {
    const names = new Set((await store.list()).map((o) => o.name));
    return names.has(`${legit.file}.manifest.json`) && names.has(`${legit.startSegment}.json`);
  });
});
afterAll(async () => {
  service?.proc.kill("SIGKILL");
  await sql?.end({ timeout: 1 });
  await cluster?.stop();
  await s3?.stop();
  await rm(scratchRoot, { recursive: true, force: true });
  await rm(markDir, { recursive: true, force: true });
});

/** Where the planted bases' `recovery_end_command` would leave its mark, were it ever run. */
const plantedMark = () => join(markDir, "planted");

/**
 * The planted base backup's bytes: the real one, decrypted, with `recovery_end_command` appended to
 * its postgresql.auto.conf, packed plain (tar+gzip). Made once for the file, on first use: each
 * planted base is a copy of it, under a name and with a manifest of its own.
 */
let plantedTar: Promise<string> | undefined;
function plantedBaseTar(): Promise<string> {
  return (plantedTar ??= (async () => {
    const work = await tempDir("pitr-trust-plant");
    const plainTar = join(work, "base.tar");
    await pipeline(
      await unsealFrom(join(baseDir(dir), legit.file), {
        encryption: legit.encryption,
        age: loadConfig(env).backup.age,
        name: legit.file,
      }),
      createWriteStream(plainTar),
    );
    const data = join(work, "data");
    await mkdir(data);
    expect(Bun.spawnSync(["tar", "-x", "-f", plainTar, "-C", data]).exitCode).toBe(0);
    const auto = join(data, "postgresql.auto.conf");
    await writeFile(auto, `${await readFile(auto, "utf8")}\nrecovery_end_command = 'id > ${plantedMark()}'\n`);
    await chmod(data, 0o700); // as a data directory must be
    const planted = join(work, "planted.tar.gz");
    // gzip's fastest level: what is planted is a tar+gzip file whatever its size; level 6 costs twice the CPU.
    expect(Bun.spawnSync(["tar", "-c", "-I", "gzip -1", "-f", planted, "-C", data, "."]).exitCode).toBe(0);
    await rm(plainTar);
    await rm(data, { recursive: true });
    return planted;
  })());
}

/**
 * The planted base backup of the review (see plantedBaseTar) under a newer name, with a manifest
 * that matches its bytes (signed with the key only when `signed`). Returns its name.
 */
async function plantBase(signed: boolean): Promise<string> {
  const name = `shinkei_base_29990101_00000${signed ? 1 : 0}.tar.gz`;
  const target = join(baseDir(dir), name);
  await copyFile(await plantedBaseTar(), target);
  const bytes = await Bun.file(target).bytes();
  // Planted as gzip, as an older shinkei wrote them; the copied backup_manifest keeps its own codec.
  const backupManifestFile = name.replace(
    /\.tar\.gz$/,
    `.backup_manifest.${legit.backupManifestFile.endsWith(".zst") ? "zst" : "gz"}`,
  );
  await copyFile(join(baseDir(dir), legit.backupManifestFile), join(baseDir(dir), backupManifestFile));
  const { signature: _, encryption: __, ...rest } = legit;
  const m: BaseManifest = {
    ...rest,
    file: name,
    backupManifestFile,
    format: "tar+gzip",
    sizeBytes: bytes.length,
    sha256: new Bun.CryptoHasher("sha256").update(bytes).digest("hex"),
    finishedAt: new Date(Date.parse(legit.finishedAt) + 1000).toISOString(),
  };
  await writeBaseManifest(target, signed ? signBaseManifest(m, KEY) : m);
  return name;
}

/** `pitr status --json` (a failure shows its stderr, not a JSON error). */
async function statusJson(e = env) {
  const r = await shinkei(["pitr", "status", "--json"], e);
  expect(r).toSucceed();
  return JSON.parse(r.stdout);
}

/** Written whole or not at all: the backup service reads these files while the tests change them. */
async function writeAtomic(path: string, text: string) {
  await writeFile(`${path}.test-tmp`, text);
  await rename(`${path}.test-tmp`, path);
}

const timelineOf = (tl: number) => tl.toString(16).toUpperCase().padStart(8, "0");

async function unplant(name: string) {
  for (const f of await readdir(baseDir(dir)))
    if (f.startsWith(name.replace(/\.tar\.gz$/, ""))) await rm(join(baseDir(dir), f));
}

describe("a planted base backup", () => {
  test("unsigned, newer, manifest matching: pitr restore --to latest and a drill leave it out, unrun", async () => {
    const mark = plantedMark();
    const name = await plantBase(false);
    try {
      const status = await statusJson();
      expect(status.baseBackups.map((b: { file: string }) => b.file)).toEqual([legit.file]);
      expect(status.problems.join("\n")).toContain(`base backup ${name} is not signed`);
      // The metrics and the status page read the same: one base backup, one file left out.
      const config = loadConfig(env);
      const facts = await archiveSource(
        dir,
        archiveTrust(config.backup.age),
        config.backup,
        config.wal.maxLagMs,
      ).read();
      expect(facts.kinds[0]!.count).toBe(1);
      expect(facts.window!.untrusted).toBe(1);
      const page = statusView(
        await readSnapshot(dir, undefined),
        config.backup,
        new Date(),
        await readPitrSnapshot(dir, archiveTrust(config.backup.age)),
      );
      expect(page.problems.map((p) => p.text).join("\n")).toContain(`base backup ${name} is not signed`);
      // Retention counts only our own: a planted "newest" must not let the real ones go.
      const plan = await pruneWalLocal(loadConfig(env), { dryRun: true });
      expect(plan.bases.map((d) => d.name)).toEqual([legit.file]);
      const r = await shinkei(["pitr", "restore", "--to", "latest", "--stop", "--json"], env);
      expect(r.stderr).toContain(`left out: base backup ${name} is not signed`);
      expect(r).toSucceed();
      expect(JSON.parse(r.stdout).base).toBe(legit.file);
      expect(await Bun.file(mark).exists()).toBe(false);
      // A drill would pick the newest base too: only our own.
      const drill = await shinkei(["pitr", "drill", "--json"], env);
      expect(drill).toSucceed();
      expect(JSON.parse(drill.stdout)).toMatchObject({ passed: true, base: legit.file });
      expect(await Bun.file(mark).exists()).toBe(false);
    } finally {
      await unplant(name);
    }
  });

  test("signed but plain where it encrypts: out unless --allow-unencrypted; recovery_end_command removed", async () => {
    const mark = plantedMark();
    const name = await plantBase(true);
    try {
      const strict = await shinkei(["pitr", "restore", "--to", "latest", "--stop", "--json"], env);
      expect(strict.stderr).toContain(`left out: base backup ${name} is not encrypted`);
      expect(strict).toSucceed();
      expect(JSON.parse(strict.stdout).base).toBe(legit.file);
      const r = await shinkei(["pitr", "restore", "--to", "latest", "--stop", "--json", "--allow-unencrypted"], env);
      expect(await Bun.file(mark).exists()).toBe(false);
      expect(r.stderr).toContain("removed from the base backup's settings before starting it");
      expect(r.stderr).toContain("recovery_end_command");
      expect(r).toSucceed();
      expect(JSON.parse(r.stdout).base).toBe(name);
      expect(await Bun.file(mark).exists()).toBe(false);
    } finally {
      await unplant(name);
    }
  });
});

describe("WAL records", () => {
  test("an altered or unsigned record is refused by wal-fetch and left out of the window, by name", async () => {
    const path = recordPath(walRoot(dir), legit.timeline, legit.startSegment);
    const original = await readFile(path, "utf8");
    const record = JSON.parse(original) as WalRecord;
    expect(record.signature).toMatch(/^[0-9a-f]{64}$/);
    const out = join(scratchRoot, "fetched");
    try {
      for (const [variant, changed, expected] of [
        [
          "altered",
          { ...record, receivedAt: new Date(Date.parse(record.receivedAt) + 3_600_000).toISOString() },
          "does not match its signature",
        ],
        ["unsigned", { ...record, signature: undefined }, "is not signed"],
      ] as const) {
        await writeAtomic(path, JSON.stringify(changed));
        const fetched = await shinkei(["pitr", "wal-fetch", legit.startSegment, out], env);
        expect(fetched.code, variant).toBe(126);
        expect(fetched.stderr).toContain(`WAL segment ${legit.startSegment} ${expected}`);
        expect(await Bun.file(out).exists()).toBe(false);
        const status = await statusJson();
        expect(status.problems.join("\n")).toContain(
          `left out of the window: WAL segment ${legit.startSegment} ${expected}`,
        );
        // Without the base's first segment there is nothing to recover from.
        expect(status.window.earliest).toBeNull();
      }
    } finally {
      await writeAtomic(path, original);
      await rm(out, { force: true });
    }
    expect(await shinkei(["pitr", "wal-fetch", legit.startSegment, out], env)).toSucceed();
    await rm(out, { force: true });
  });
});

describe("WAL in the spool", () => {
  const spool = () => join(walRoot(dir), "spool");
  const receiving = async () => (await readdir(spool())).filter((n) => n.endsWith(".partial")).sort()[0]!;

  test("the segment being received is signed as it is received, and served only as far as it is signed", async () => {
    await sql`insert into notes (body) select 'spooled ' || i from generate_series(1, 200) i`;
    const partial = await receiving();
    const sigPath = spoolSignaturePath(dir, partial);
    await until(
      "the receiving segment signed",
      async () => ((await readSpoolSignature(dir, partial, KEY))?.bytes ?? 0) > 0,
    );
    const out = join(scratchRoot, "receiving");
    try {
      const fetched = await shinkei(["pitr", "wal-fetch", partial.slice(0, -".partial".length), out], env);
      expect(fetched).toSucceed();
      const served = await Bun.file(out).bytes();
      const sig = JSON.parse(await readFile(sigPath, "utf8")) as SpoolSignature;
      expect(served.length).toBe((await Bun.file(join(spool(), partial)).bytes()).length);
      // What was served up to the signed length is what the signature covers; zeros after it.
      expect(new Bun.CryptoHasher("sha256").update(served.subarray(0, sig.bytes)).digest("hex")).toBe(sig.sha256);
      expect(served.subarray(sig.bytes).every((b) => b === 0)).toBe(true);
    } finally {
      await rm(out, { force: true });
    }
  });

  test("a drill recovers only once the WAL service has signed through its restore point", async () => {
    // The service signs the spool on each of its passes: paused, it signs nothing, while its
    // receiver (a process of its own) goes on flushing. The drill must wait, not recover to a
    // point beyond what the archive serves ("recovery ended before configured recovery target").
    const pid = service!.proc.pid;
    process.kill(pid, "SIGSTOP");
    let resumed = false;
    try {
      const drill = shinkei(["pitr", "drill", "--json"], env);
      let done = false;
      void drill.finally(() => {
        done = true;
      });
      await Bun.sleep(3_000);
      expect(done).toBe(false);
      process.kill(pid, "SIGCONT");
      resumed = true;
      const r = await drill;
      expect(r).toSucceed();
      expect(JSON.parse(r.stdout).passed).toBe(true);
    } finally {
      if (!resumed) process.kill(pid, "SIGCONT");
    }
  });

  test("WAL planted in the spool: refused by wal-fetch and the archiver, never replayed", async () => {
    // Real WAL the archive lacks: a segment the receiver finished (it holds a row written now),
    // taken out of the archive and put back in the spool, where it would be the archive's end.
    const segment = (await receiving()).slice(0, -".partial".length);
    await sql`insert into notes (body) values ('only in the planted segment')`;
    await sql`select pg_switch_wal()`;
    const record = recordPath(walRoot(dir), legit.timeline, segment);
    await until("the segment sealed", async () => Bun.file(record).exists());
    // The archiver takes the segment out of the spool after its record is written, and the signer
    // forgets its signature only at its next pass. Until then the same bytes put back in the spool
    // still match the receiver's signature (they are what it wrote) and would be served.
    await until(
      "the segment out of the spool, its signature forgotten",
      async () =>
        !(await Bun.file(join(spool(), segment)).exists()) &&
        !(await Bun.file(spoolSignaturePath(dir, segment)).exists()) &&
        !(await Bun.file(spoolSignaturePath(dir, `${segment}.partial`)).exists()),
    );
    const plain = join(scratchRoot, "planted-plain");
    expect(await shinkei(["pitr", "wal-fetch", segment, plain], env)).toSucceed();
    const archived = JSON.parse(await readFile(record, "utf8")) as WalRecord;
    const aside = join(scratchRoot, "aside");
    await mkdir(aside, { recursive: true });
    const sealedFile = join(walRoot(dir), timelineOf(legit.timeline), archived.file);
    await rename(record, join(aside, "record.json"));
    await rename(sealedFile, join(aside, archived.file));
    const planted = join(spool(), segment);
    const out = join(scratchRoot, "fetched-planted");
    try {
      await copyFile(plain, join(spool(), ".planting"));
      await rename(join(spool(), ".planting"), planted);

      const fetched = await shinkei(["pitr", "wal-fetch", segment, out], env);
      expect(fetched.code).toBe(126);
      expect(fetched.stderr).toContain(
        `WAL segment ${segment} in the spool is not signed, and BACKUP_MANIFEST_KEY is set: ` +
          "the WAL receiver did not write it",
      );
      expect(await Bun.file(out).exists()).toBe(false);

      // The archiver does not seal it under a signed record either: the signer names it, never signs it.
      await service!.waitFor(
        (l) => l.file === segment && String(l.msg).includes("the WAL receiver was not writing is not signed"),
        30_000,
      );
      expect(await Bun.file(record).exists()).toBe(false);

      // Recovery to latest asks for it after what the archive holds: it aborts, naming it, instead of replaying it.
      const r = await shinkei(["pitr", "restore", "--to", "latest", "--stop", "--json"], env);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(`WAL segment ${segment} in the spool is not signed`);
      expect(r.stdout).not.toContain('"reached"');
    } finally {
      await rm(planted, { force: true });
      await rm(out, { force: true });
      await rm(plain, { force: true });
      await rename(join(aside, archived.file), sealedFile);
      await rename(join(aside, "record.json"), record);
    }
    // The same bytes, archived as the receiver wrote them, do replay: only the refusal kept them out.
    const back = await shinkei(["pitr", "restore", "--to", "latest", "--json"], env);
    expect(back).toSucceed();
    const recovered = connect(JSON.parse(back.stdout).url, { max: 1 });
    try {
      expect(await recovered`select 1 from notes where body = 'only in the planted segment'`).toHaveLength(1);
    } finally {
      await recovered.end({ timeout: 1 });
      expect(await shinkei(["pitr", "cleanup"], env)).toSucceed();
    }
  });
});

describe("off-site", () => {
  test("from the bucket alone: a planted unsigned base is out; an altered WAL record, refused, ends it", async () => {
    const store = walStore(loadConfig(env))!;
    // A host that lost its local archive: the same keys and bucket, an empty BACKUP_DIR.
    const empty = await tempDir("pitr-trust-empty");
    const fresh = { ...env, BACKUP_DIR: empty };
    const work = await tempDir("pitr-trust-bucket");
    const name = "shinkei_base_29990101_000002.tar.gz";
    const recordName = `${legit.startSegment}.json`;
    const original = join(work, "original.json");
    await store.get(recordName, original);
    try {
      // The planted base: any bytes, a manifest matching them, no signature.
      const bytes = Buffer.from("planted");
      await writeFile(join(work, name), bytes);
      const { signature: _, encryption: __, ...rest } = legit;
      await writeFile(
        join(work, "m.json"),
        JSON.stringify({
          ...rest,
          file: name,
          format: "tar+gzip",
          sizeBytes: bytes.length,
          sha256: new Bun.CryptoHasher("sha256").update(bytes).digest("hex"),
          finishedAt: new Date(Date.parse(legit.finishedAt) + 2000).toISOString(),
        }),
      );
      await store.put(name, join(work, name));
      await store.put(`${name}.manifest.json`, join(work, "m.json"));
      const planted = await shinkei(["pitr", "restore", "--to", "latest", "--stop", "--json"], fresh);
      expect(planted.stderr).toContain(`left out: base backup ${name} is not signed, and BACKUP_MANIFEST_KEY is set`);
      expect(planted.stderr).toContain("(off-site copy)");
      expect(planted).toSucceed();
      expect(JSON.parse(planted.stdout).base).toBe(legit.file);

      // The first segment's record, altered in the bucket.
      const record = JSON.parse(await readFile(original, "utf8")) as WalRecord;
      await writeFile(
        join(work, "altered.json"),
        JSON.stringify({ ...record, receivedAt: new Date(Date.parse(record.receivedAt) + 60_000).toISOString() }),
      );
      await store.put(recordName, join(work, "altered.json"));
      const out = join(work, "fetched");
      const fetched = await shinkei(["pitr", "wal-fetch", legit.startSegment, out], fresh);
      expect(fetched.code).toBe(126);
      expect(fetched.stderr).toContain(`WAL segment ${legit.startSegment} does not match its signature`);
      expect(await Bun.file(out).exists()).toBe(false);
      const r = await shinkei(["pitr", "restore", "--to", "latest", "--stop"], fresh);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(`left out: WAL segment ${legit.startSegment} does not match its signature`);
      expect(r.stderr).toContain("nothing to recover from");
    } finally {
      await store.put(recordName, original);
      await store.remove(name).catch(() => {});
      await store.remove(`${name}.manifest.json`).catch(() => {});
      await rm(work, { recursive: true, force: true });
      await rm(empty, { recursive: true, force: true });
    }
  });
});

describe("an archive written before signing", () => {
  test("left out once the key is set, until pitr sign signs what matches its SHA-256; damage is named", async () => {
    const basePath = join(baseDir(dir), legit.file) + ".manifest.json";
    const segment = recordPath(walRoot(dir), legit.timeline, legit.startSegment);
    const history = { base: await readFile(basePath, "utf8"), segment: await readFile(segment, "utf8") };
    const unsign = async (path: string) => {
      const { signature: _, ...rest } = JSON.parse(await readFile(path, "utf8"));
      await writeAtomic(path, JSON.stringify(rest));
    };
    // A third record, unsigned and with a file that no longer matches it.
    const damagedName = "0000000100000000000000FF";
    const damaged = recordPath(walRoot(dir), legit.timeline, damagedName);
    try {
      await unsign(basePath);
      await unsign(segment);
      const { signature: _, ...seg } = JSON.parse(history.segment) as WalRecord;
      await writeAtomic(damaged, JSON.stringify({ ...seg, name: damagedName, file: `${damagedName}.gz.age` }));
      await writeFile(
        join(walRoot(dir), timelineOf(legit.timeline), `${damagedName}.gz.age`),
        "not the bytes it records",
      );
      const before = await statusJson();
      expect(before.problems.join("\n")).toContain(`base backup ${legit.file} is not signed`);
      expect(before.problems.join("\n")).toContain(`WAL segment ${legit.startSegment} is not signed`);
      expect(before.window.earliest).toBeNull();

      const r = await shinkei(["pitr", "sign", "--json"], env);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(1); // the damaged one is named
      const out = JSON.parse(r.stdout);
      expect(out.signed).toEqual(expect.arrayContaining([legit.startSegment, legit.file]));
      expect(out.refused.map((x: { file: string }) => x.file)).toEqual([damagedName]);
      const after = await statusJson();
      expect(after.window.earliest).toBe(legit.finishedAt);
      expect(after.problems.join("\n")).not.toContain(legit.startSegment);
      expect(after.problems.join("\n")).toContain(`WAL segment ${damagedName} is not signed`);
      // Signed with this key, the records verify as the archiver's own do.
      expect(JSON.parse(await readFile(segment, "utf8")).signature).toBe(JSON.parse(history.segment).signature);
    } finally {
      await writeAtomic(basePath, history.base);
      await writeAtomic(segment, history.segment);
      await rm(damaged, { force: true });
      await rm(join(walRoot(dir), timelineOf(legit.timeline), `${damagedName}.gz.age`), { force: true });
    }
  });
});

describe("--into-dir", () => {
  test("if the base's pg_hba.conf cannot be kept aside, nothing is handed over (the scratch one trusts)", async () => {
    const wrap = await wrapTool(
      "cp",
      `case "$*" in *pg_hba.conf.before-recovery*) echo "cp: planted failure" >&2; exit 1;; esac\nexec "$REAL" "$@"`,
    );
    await chmod(wrap, 0o755);
    const target = join(scratchRoot, "handed-over");
    try {
      const r = await shinkei(["pitr", "restore", "--to", "latest", "--into-dir", target], {
        ...env,
        PATH: pathWith(wrap),
      });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("keeping the base backup's pg_hba.conf failed");
      expect(await Bun.file(join(target, "pg_hba.conf")).exists()).toBe(false);
    } finally {
      await rm(wrap, { recursive: true, force: true });
      await rm(target, { recursive: true, force: true });
    }
  });
});

test("an archive signed too late is summed up, not listed a line per file", () => {
  const many = Array.from({ length: 40 }, (_, i) => ({ file: `f${i}`, problem: `WAL segment f${i} is not signed` }));
  expect(describeUntrusted(many)).toEqual([
    ...many.slice(0, 5).map((u) => u.problem),
    "and 35 more file(s) left out (shinkei pitr status --json lists them)",
  ]);
  expect(describeUntrusted(many.slice(0, 2))).toEqual(["WAL segment f0 is not signed", "WAL segment f1 is not signed"]);
});

describe("a base backup's settings", () => {
  test("every setting that runs a program, loads code or reads a file is commented out, in any case or spacing", () => {
    const text = [
      "port = 5432",
      "recovery_end_command = 'id > /tmp/x'",
      "  Archive_Command='x'",
      "shared_preload_libraries 'evil'",
      "include_dir 'conf.d'",
      "include = 'other.conf'",
      "ssl_passphrase_command = 'x'",
      "dynamic_library_path = '/tmp'",
      "some_ext.thing_command = 'x'",
      "# recovery_end_command = 'commented already'",
      "work_mem = '4MB' # archive_command in a comment",
    ].join("\n");
    const r = scrubSettings(text);
    expect(r.removed).toEqual([
      "recovery_end_command",
      "archive_command",
      "shared_preload_libraries",
      "include_dir",
      "include",
      "ssl_passphrase_command",
      "dynamic_library_path",
      "some_ext.thing_command",
    ]);
    const kept = r.text.split("\n").filter((l) => !l.startsWith("#"));
    expect(kept).toEqual(["port = 5432", "work_mem = '4MB' # archive_command in a comment"]);
  });
});

describe("instance folders read as root", () => {
  test("readInstanceFile: a regular file up to its cap, or its tail; no link, FIFO or file over the cap", async () => {
    const folder = await tempDir("pitr-trust-read");
    try {
      await writeFile(join(folder, "small"), "12345\n");
      await writeFile(join(folder, "big"), "x".repeat(5000) + "END");
      const { symlink } = await import("node:fs/promises");
      await symlink(join(folder, "small"), join(folder, "link"));
      expect(Bun.spawnSync(["mkfifo", join(folder, "fifo")]).exitCode).toBe(0);
      expect(readInstanceFile(join(folder, "small"))).toBe("12345\n");
      expect(readInstanceFile(join(folder, "big"), 1000)).toBeNull();
      expect(readInstanceFile(join(folder, "big"), 10, { tail: true })).toBe("xxxxxxxEND");
      expect(readInstanceFile(join(folder, "link"))).toBeNull();
      expect(readInstanceFile(join(folder, "fifo"))).toBeNull();
      expect(readInstanceFile(join(folder, "missing"))).toBeNull();
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test("a FIFO postmaster.pid in a leftover instance does not hang pitr cleanup; the folder is removed", async () => {
    const root = join(scratchRoot, "shinkei-pitr-instance-fifo01");
    await fakeInstance(
      root,
      { port: 5, ownerPid: 2 ** 22 + 17, createdAt: "2020-01-01T00:00:00.000Z", keep: false },
      0o700,
    );
    const fifo = Bun.spawnSync(["mkfifo", join(root, "data", "postmaster.pid")]);
    expect(fifo.exitCode).toBe(0);
    const r = await shinkei(["pitr", "cleanup", "--json"], { TMPDIR: scratchRoot }, { timeoutSeconds: 30 });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).removed.map((x: { root: string }) => x.root)).toEqual([root]);
    expect((await readdir(scratchRoot)).filter((n) => n.startsWith("shinkei-pitr-instance-"))).toEqual([]);
  });
});
