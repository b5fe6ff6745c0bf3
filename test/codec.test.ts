import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { gzipSync } from "node:zlib";
import { generateIdentity, identityToRecipient } from "age-encryption";
import { codecOf, sealTo, unsealFrom } from "../src/storage/seal.ts";
import { encryptionFor } from "../src/storage/crypt.ts";
import { archiveWalFile, readRecord, recordPath, walRoot, writeRecord } from "../src/wal/archive.ts";
import { fetchWal } from "../src/wal/fetch.ts";
import { loadConfig } from "../src/config/index.ts";
import type { ShinkeiError } from "../src/errors.ts";
import { tempDir } from "./support/fixtures.ts";

const SEGMENT = 16 * 1024 * 1024;
let dir: string;
beforeAll(async () => {
  dir = await tempDir("codec");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** WAL-like bytes: mostly repeated, some not, so a codec has work to do and a mix-up shows. */
function walLike(seed: number): Uint8Array {
  const b = new Uint8Array(SEGMENT);
  for (let i = 0; i < b.length; i += 4096)
    b.set(new TextEncoder().encode(`page ${i} of segment ${seed} `.repeat(20)), i);
  for (let i = 0; i < 4096; i++) b[(i * 7919 * (seed + 1)) % b.length] = (i * seed) & 0xff;
  return b;
}

describe("codecs", () => {
  test("a name says its codec: .zst (also before .age) is zstd, anything else gzip", () => {
    expect(codecOf("000000010000000000000001.zst")).toBe("zstd");
    expect(codecOf("000000010000000000000001.zst.age")).toBe("zstd");
    expect(codecOf("shinkei_base_20261206_010203.tar.zst")).toBe("zstd");
    expect(codecOf("shinkei_base_20261206_010203.tar.gz.age")).toBe("gzip");
    expect(codecOf("000000010000000000000001.gz")).toBe("gzip");
  });

  test("sealTo with zstd: a zstd frame unsealFrom reads back byte for byte, smaller than gzip -6 makes", async () => {
    const plain = walLike(1);
    const path = join(dir, "seg.zst");
    const sealed = await sealTo(Readable.from([plain]), path, { codec: "zstd", plainHash: true });
    const stored = await readFile(path);
    // zstd's magic number, 0xFD2FB528 little-endian: not a gzip stream under another name.
    expect([...stored.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd]);
    expect(sealed.bytesIn).toBe(SEGMENT);
    expect(sealed.plainSha256).toBe(new Bun.CryptoHasher("sha256").update(plain).digest("hex"));
    expect(sealed.sha256).toBe(new Bun.CryptoHasher("sha256").update(stored).digest("hex"));
    const back = Buffer.concat(await (await unsealFrom(path, { name: "seg.zst" })).toArray());
    expect(back.equals(Buffer.from(plain))).toBe(true);
    expect(stored.length).toBeLessThanOrEqual(gzipSync(plain, { level: 6 }).length * 1.05);
  });

  test("sealTo from memory (as the WAL archive seals) gives back what a stream does, plain or encrypted", async () => {
    const plain = walLike(2);
    const identity = await generateIdentity();
    const age = { recipients: [await identityToRecipient(identity)] };
    const idFile = join(dir, "identity.txt");
    await writeFile(idFile, `${identity}\n`);
    for (const encrypted of [false, true]) {
      const name = `mem.zst${encrypted ? ".age" : ""}`;
      const path = join(dir, name);
      const options = { codec: "zstd" as const, plainHash: true, age: encrypted ? age : undefined };
      const sealed = await sealTo(plain, path, options);
      const streamed = await sealTo(Readable.from([plain]), `${path}.streamed`, options);
      const stored = await readFile(path);
      expect(sealed.bytesIn).toBe(SEGMENT);
      expect(sealed.sizeBytes).toBe(stored.length);
      expect(sealed.plainSha256).toBe(streamed.plainSha256!);
      expect(sealed.sha256).toBe(new Bun.CryptoHasher("sha256").update(stored).digest("hex"));
      const encryption = encrypted ? encryptionFor(age) : undefined;
      const back = Buffer.concat(
        await (await unsealFrom(path, { name, encryption, age: { ...age, identityFile: idFile } })).toArray(),
      );
      expect(back.equals(Buffer.from(plain))).toBe(true);
      // The stored file is what a reader of the stream's output expects: age's header, or zstd's magic number.
      expect(stored.subarray(0, 4).toString("hex")).toBe(encrypted ? "6167652d" : "28b52ffd");
    }
  });

  test("WAL is sealed with zstd; a segment an older shinkei archived as gzip is still served (wal-fetch)", async () => {
    const config = loadConfig({
      DATABASE_URL: "postgres://postgres@127.0.0.1:1/x",
      BACKUP_DIR: dir,
      WAL_ARCHIVE: "stream",
    });
    const root = walRoot(dir);
    const spool = join(dir, "spool-test");
    await Bun.write(join(spool, "000000010000000000000001"), walLike(2));
    await Bun.write(join(spool, "000000010000000000000002"), walLike(3));
    const fresh = await archiveWalFile(join(spool, "000000010000000000000001"), root, { segmentBytes: SEGMENT });
    expect(fresh.record.file).toBe("000000010000000000000001.zst");

    // The second one as an older shinkei stored it: gzip, its record naming the .gz file.
    const old = await archiveWalFile(join(spool, "000000010000000000000002"), root, { segmentBytes: SEGMENT });
    const gz = gzipSync(walLike(3), { level: 6 });
    const tl = join(root, "00000001");
    await rm(join(tl, old.record.file));
    await writeFile(join(tl, "000000010000000000000002.gz"), gz);
    await writeRecord(root, {
      ...old.record,
      file: "000000010000000000000002.gz",
      sizeBytes: gz.length,
      sha256: new Bun.CryptoHasher("sha256").update(gz).digest("hex"),
    });
    expect((await readRecord(recordPath(root, 1, "000000010000000000000002")))?.file).toBe(
      "000000010000000000000002.gz",
    );

    for (const [name, seed] of [
      ["000000010000000000000001", 2],
      ["000000010000000000000002", 3],
    ] as const) {
      const target = join(dir, `fetched-${name}`);
      const got = await fetchWal(config, name, target);
      expect(got.from).toBe("local");
      expect((await readFile(target)).equals(Buffer.from(walLike(seed)))).toBe(true);
    }
  });

  test("a planted file that decompresses past its record's size is refused as it decompresses", async () => {
    // An archive without BACKUP_MANIFEST_KEY: whoever writes to it can plant a file and a record to match.
    const config = loadConfig({
      DATABASE_URL: "postgres://postgres@127.0.0.1:1/x",
      BACKUP_DIR: dir,
      WAL_ARCHIVE: "stream",
    });
    const root = walRoot(dir);
    const tl = join(root, "00000001");
    // 256 MiB of zeros in a few hundred KiB: what the record would let through is one 16 MiB segment.
    const huge = new Uint8Array(256 * 1024 * 1024);
    for (const [name, file, bytes] of [
      ["000000010000000000000021", "000000010000000000000021.zst", Bun.zstdCompressSync(huge)],
      ["000000010000000000000022", "000000010000000000000022.gz", gzipSync(huge, { level: 1 })],
    ] as const) {
      await Bun.write(join(tl, file), bytes);
      await writeRecord(root, {
        walRecordVersion: 1,
        name,
        kind: "segment",
        timeline: 1,
        file,
        sizeBytes: bytes.length,
        sha256: new Bun.CryptoHasher("sha256").update(bytes).digest("hex"),
        originalBytes: SEGMENT,
        originalSha256: new Bun.CryptoHasher("sha256").update(huge.subarray(0, SEGMENT)).digest("hex"),
        segmentBytes: SEGMENT,
        receivedAt: new Date().toISOString(),
        archivedAt: new Date().toISOString(),
      });
      const target = join(dir, `bomb-${name}`);
      const failed = await fetchWal(config, name, target).then(
        () => null,
        (e: ShinkeiError) => e,
      );
      expect(failed?.code).toBe("BACKUP_CORRUPT");
      expect(failed?.message).toBe(`${file} decompresses to more than the ${SEGMENT} bytes its record says`);
      expect(await Bun.file(target).exists()).toBe(false);
    }
  });
});

describe("WAL sealed with a passphrase", () => {
  const MiB = 1024 * 1024;
  const names = ["000000010000000000000011", "000000010000000000000012", "000000010000000000000013"];
  const segment = (i: number) => walLike(i).subarray(0, MiB);
  const WAL_PASSPHRASE = "correct horse battery staple wal";
  const configWith = (passphrase: string) =>
    loadConfig({
      DATABASE_URL: "postgres://postgres@127.0.0.1:1/x",
      BACKUP_DIR: join(dir, "passphrase"),
      WAL_ARCHIVE: "stream",
      BACKUP_AGE_PASSPHRASE: passphrase,
    });

  test("segments go to one key of the writing process, wrapped with the passphrase; it alone opens them", async () => {
    const config = configWith(WAL_PASSPHRASE);
    const root = walRoot(config.backupDir);
    const spool = join(config.backupDir, "spool-test");
    const records = [];
    for (const [i, name] of names.entries()) {
      await Bun.write(join(spool, name), segment(i));
      records.push(
        (await archiveWalFile(join(spool, name), root, { segmentBytes: MiB, age: config.backup.age })).record,
      );
    }
    // One scrypt per process, not per segment: every record carries the same wrapped key, and the
    // files are X25519 age files (the key's), not scrypt ones (the passphrase's).
    const wrapped = records.map((r) => (r.encryption?.method === "passphrase" ? r.encryption.wrappedKey : undefined));
    expect(wrapped[0]).toMatch(/^[A-Za-z0-9+/]{100,}={0,2}$/);
    expect(new Set(wrapped).size).toBe(1);
    for (const r of records) {
      const header = (await readFile(join(root, "00000001", r.file))).subarray(0, 200).toString("latin1");
      expect(header).toStartWith("age-encryption.org/v1\n-> X25519 ");
      expect(header).not.toContain("-> scrypt");
    }
    // The wrapped key itself is a passphrase (scrypt) age file: nothing but the passphrase opens it.
    expect(Buffer.from(wrapped[0]!, "base64").toString("latin1")).toContain("-> scrypt ");

    for (const [i, name] of names.entries()) {
      const target = join(dir, `fetched-passphrase-${name}`);
      await fetchWal(config, name, target);
      expect((await readFile(target)).equals(Buffer.from(segment(i)))).toBe(true);
    }
  });

  test("two archivers of one spool file at once (two services on one folder): the file is its record's", async () => {
    // A redeploy that starts the new service before the old one stops: both drain the one spool.
    // Each seal is encrypted to a new file key, so the two copies differ byte for byte.
    const config = loadConfig({
      DATABASE_URL: "postgres://postgres@127.0.0.1:1/x",
      BACKUP_DIR: join(dir, "two-archivers"),
      WAL_ARCHIVE: "stream",
      BACKUP_AGE_PASSPHRASE: WAL_PASSPHRASE,
    });
    const root = walRoot(config.backupDir);
    const spool = join(config.backupDir, "spool-test");
    for (let i = 0; i < 6; i++) {
      const name = `0000000100000000000000${(0x40 + i).toString(16).toUpperCase()}`;
      await Bun.write(join(spool, name), segment(i));
      const both = await Promise.allSettled(
        [0, 1].map(() => archiveWalFile(join(spool, name), root, { segmentBytes: MiB, age: config.backup.age })),
      );
      const record = await readRecord(recordPath(root, 1, name));
      if (record) {
        const file = await readFile(join(root, "00000001", record.file));
        expect(new Bun.CryptoHasher("sha256").update(file).digest("hex")).toBe(record.sha256);
      }
      // Neither fails (one seals, the other finds it sealed), so the spool file is not left over either.
      expect(both.map((r) => r.status)).toEqual(["fulfilled", "fulfilled"]);
      const target = join(dir, `fetched-two-${name}`);
      await fetchWal(config, name, target);
      expect((await readFile(target)).equals(Buffer.from(segment(i)))).toBe(true);
    }
  });

  test("a wrong passphrase, or a wrapped key that is not one, opens nothing and writes nothing", async () => {
    const wrong = configWith("not the passphrase");
    const target = join(dir, "fetched-wrong-passphrase");
    const failed = await fetchWal(wrong, names[0]!, target).catch((e) => e);
    expect(failed.code).toBe("DECRYPT_FAILED");
    expect(await Bun.file(target).exists()).toBe(false);

    const root = walRoot(wrong.backupDir);
    const path = recordPath(root, 1, names[1]!);
    const record = JSON.parse(await readFile(path, "utf8"));
    const wk = record.encryption.wrappedKey as string;
    for (const encryption of [
      { method: "passphrase", wrappedKey: "x\n$(id)" },
      { method: "passphrase", wrappedKey: [wk] },
      { method: "passphrase", wrappedKey: wk, recipients: ["age1x"] },
      { method: "recipients", recipients: ["age1x"], wrappedKey: wk },
      { method: "recipients" },
    ]) {
      await writeFile(path, JSON.stringify({ ...record, encryption }));
      expect(await readRecord(path)).toBeNull();
    }
    await writeFile(path, JSON.stringify(record));

    // Where no record check stands before it (a manifest), decrypt itself refuses a wrapped key that
    // is not one, and one asking a costlier scrypt than ours before running it.
    const stored = join(root, "00000001", record.file);
    const age = { recipients: [], passphrase: WAL_PASSPHRASE };
    const costly = Buffer.from(
      Buffer.from(wk, "base64")
        .toString("latin1")
        .replace(/^(-> scrypt \S+) 18$/m, "$1 20"),
      "latin1",
    ).toString("base64");
    for (const [wrappedKey, says] of [
      [5, "its record's wrapped key is not one"],
      [costly, "not a passphrase-encrypted key of ours"],
    ] as const) {
      const opened = await unsealFrom(stored, {
        name: record.file,
        age,
        encryption: { method: "passphrase", wrappedKey: wrappedKey as string },
      }).catch((e) => e);
      expect(opened.code).toBe("DECRYPT_FAILED");
      expect(opened.message).toContain(says);
    }
  });

  test("one process sealing with two passphrases keeps a key for each", async () => {
    const spool = join(dir, "two-passphrases");
    const sealed = [];
    // The first is the first test's: its key, made there, is this process's already (when that test ran),
    // and a key made costs a scrypt (about a second of CPU). The second is new here.
    for (const [i, passphrase] of [WAL_PASSPHRASE, "second passphrase, long enough"].entries()) {
      const config = configWith(passphrase);
      const root = join(dir, `two-${i}`);
      await Bun.write(join(spool, names[i]!), segment(i));
      const { record } = await archiveWalFile(join(spool, names[i]!), root, {
        segmentBytes: MiB,
        age: config.backup.age,
      });
      sealed.push({ config: { ...config, backupDir: dir }, root, record });
    }
    // Back to the first: its key again, not a new one.
    await Bun.write(join(spool, names[2]!), segment(2));
    const again = await archiveWalFile(join(spool, names[2]!), sealed[0]!.root, {
      segmentBytes: MiB,
      age: sealed[0]!.config.backup.age,
    });
    expect(again.record.encryption).toEqual(sealed[0]!.record.encryption);
    expect(sealed[1]!.record.encryption).not.toEqual(sealed[0]!.record.encryption);
    // The first passphrase's segments open as the first test shows; the second's open with the second.
    const second = sealed[1]!;
    const back = await unsealFrom(join(second.root, "00000001", second.record.file), {
      name: second.record.file,
      age: second.config.backup.age,
      encryption: second.record.encryption,
    });
    expect(Buffer.concat(await back.toArray()).equals(Buffer.from(segment(1)))).toBe(true);
  });

  test("a file an older shinkei encrypted with the passphrase itself still opens", async () => {
    const age = { recipients: [], passphrase: "correct horse battery staple old" };
    const plain = segment(7);
    const path = join(dir, "old-passphrase.zst.age");
    await sealTo(plain, path, { codec: "zstd", age });
    expect((await readFile(path)).subarray(0, 40).toString("latin1")).toContain("-> scrypt ");
    const back = await unsealFrom(path, { name: "old-passphrase.zst.age", encryption: { method: "passphrase" }, age });
    expect(Buffer.concat(await back.toArray()).equals(Buffer.from(plain))).toBe(true);
  });
});
