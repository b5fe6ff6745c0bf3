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
});
