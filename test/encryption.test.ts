import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { readdir, readFile, rm, stat, truncate } from "node:fs/promises";
import { join } from "node:path";
import { GetObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { snapshot, type TestDatabase } from "./support/db.ts";
import { startCluster, type TestCluster } from "./support/cluster.ts";
import { shinkei, takeBackup as takeBackupWith } from "./support/cli.ts";
import { backupFolder, copyBackup, seededDatabase } from "./support/backup.ts";
import { tempDir } from "./support/fixtures.ts";
import { TestS3 } from "./support/s3.ts";

let db: TestDatabase;
let dir: string;
let keys: string;
let publicKey: string;
let env: Record<string, string>;
const SECRET = "beat 3 of confidential-tag";

async function keygen(path: string) {
  const r = await shinkei(["backup", "keygen", "--output", path, "--json"]);
  expect(r).toSucceed();
  return JSON.parse(r.stdout).recipient as string;
}
const takeBackup = (extra: Record<string, string> = {}) => takeBackupWith({ ...env, ...extra });
/*
 * An encrypted backup of the seeded database, taken once: a test that only needs one in its folder
 * (to be refused, damaged, checked or verified) gets a copy instead of a run of `shinkei backup` of its own.
 * The tests that show what a backup writes take their own.
 */
let shared: string;
const sharedBackup = () => copyBackup(shared, dir);

/*
 * A server of this file's own: a restore refuses to commit when any database's row in pg_database
 * changed during its load, and test files running beside this one (bun test --parallel) create and
 * drop databases on the shared server all the time.
 */
let server: TestCluster;

beforeAll(async () => {
  server = await startCluster();
  db = await seededDatabase("age", "confidential-tag", server.url());
  keys = await tempDir("age-keys");
  publicKey = await keygen(join(keys, "main.key"));
  shared = await takeBackupWith((await backupFolder(db, "age-shared", { BACKUP_AGE_RECIPIENTS: publicKey })).env);
});
beforeEach(async () => {
  ({ dir, env } = await backupFolder(db, "age", { BACKUP_AGE_RECIPIENTS: publicKey }));
});
afterAll(async () => {
  await db.drop();
  await server.stop();
});

describe("keygen", () => {
  test("writes a 0600 identity, prints its public key, and never overwrites", async () => {
    const path = join(keys, "new.key");
    const r = await shinkei(["backup", "keygen", "--output", path]);
    expect(r).toSucceed();
    expect(r.stdout).toMatch(/^public key: age1[0-9a-z]+$/m);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const before = await readFile(path, "utf8");
    expect(before).toMatch(/^AGE-SECRET-KEY-1[0-9A-Z]+$/m);
    const again = await shinkei(["backup", "keygen", "--output", path]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("already exists; refusing to overwrite a key");
    expect(await readFile(path, "utf8")).toBe(before);
  });

  test("the default output name is one git ignores, so the key is never committed by accident", async () => {
    const cwd = await tempDir("keygen-default");
    const r = await shinkei(["backup", "keygen", "--json"], {}, { cwd });
    expect(r).toSucceed();
    const written = JSON.parse(r.stdout).identityFile as string;
    expect((await stat(join(cwd, written))).mode & 0o777).toBe(0o600);
    // The project's .gitignore in a scratch repository: git's own rules decide, wherever the tests run.
    const repo = await tempDir("keygen-git");
    await Bun.write(join(repo, ".gitignore"), Bun.file(join(import.meta.dir, "..", ".gitignore")));
    expect(Bun.spawnSync(["git", "init", "-q"], { cwd: repo }).exitCode).toBe(0);
    expect(Bun.spawnSync(["git", "check-ignore", "--no-index", "-q", written], { cwd: repo }).exitCode).toBe(0);
    expect(Bun.spawnSync(["git", "check-ignore", "--no-index", "-q", "README.md"], { cwd: repo }).exitCode).toBe(1);
  });
});

describe("encrypted backups", () => {
  test("round trip with an identity; no row content in the stored bytes; the manifest names public keys", async () => {
    const before = await snapshot(db.sql);
    const file = await takeBackup();
    expect(file).toEndWith(".sql.zst.age");
    const bytes = await readFile(file);
    expect(bytes.subarray(0, 21).toString()).toBe("age-encryption.org/v1");
    expect(bytes.includes(Buffer.from(SECRET))).toBe(false);
    const manifest = JSON.parse(await readFile(`${file}.manifest.json`, "utf8"));
    expect(manifest).toMatchObject({
      format: "plain+zstd+age",
      encryption: { method: "recipients", recipients: [publicKey] },
    });
    expect(JSON.stringify(manifest)).not.toContain("AGE-SECRET-KEY");
    expect(manifest.sha256).toBe(new Bun.CryptoHasher("sha256").update(bytes).digest("hex"));

    await db.sql`delete from story_beats`;
    const r = await shinkei(
      ["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name, "--no-safety-backup"],
      {
        ...env,
        BACKUP_AGE_IDENTITY: join(keys, "main.key"),
      },
    );
    expect(r).toSucceed();
    expect(await snapshot(db.sql)).toEqual(before);
    const v = await shinkei(["backup", "verify"], { ...env, BACKUP_AGE_IDENTITY: join(keys, "main.key") });
    expect(v).toSucceed();
    const d = await shinkei(["backup", "drill"], { ...env, BACKUP_AGE_IDENTITY: join(keys, "main.key") });
    expect(d).toSucceed();
  });

  test("without the identity, or with a wrong one: an error naming the recipients, database unchanged", async () => {
    await sharedBackup();
    await db.sql`insert into worlds (owner_id, name) select id, 'after the backup' from users limit 1`;
    const before = await snapshot(db.sql);
    let r = await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`is encrypted to ${publicKey}, and no key to open it is configured`);
    const other = join(keys, `other-${crypto.randomUUID().slice(0, 6)}.key`);
    await keygen(other);
    r = await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], {
      ...env,
      BACKUP_AGE_IDENTITY: other,
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot decrypt`);
    expect(r.stderr).toContain(publicKey);
    expect(await snapshot(db.sql)).toEqual(before);
    // Neither attempt left a pre-restore backup behind: nothing was done.
    expect((await readdir(dir)).filter((n) => n.endsWith(".age")).length).toBe(1);
    await db.sql`delete from worlds where name = 'after the backup'`;
  });

  test("a truncated or altered encrypted file is refused, database unchanged", async () => {
    const file = await sharedBackup();
    const before = await snapshot(db.sql);
    const identity = { BACKUP_AGE_IDENTITY: join(keys, "main.key") };
    const bytes = await readFile(file);
    await truncate(file, bytes.length - 1000);
    let r = await shinkei(["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name], {
      ...env,
      ...identity,
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/size is \d+ bytes, the manifest says \d+/);
    // Without the manifest the encrypted stream itself must notice (age authenticates each chunk).
    await rm(`${file}.manifest.json`);
    r = await shinkei(["backup", "verify", file], { ...env, ...identity });
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("the file is damaged");
    r = await shinkei(
      ["backup", "--restore", "--allow-superuser", "--backup-file", file, "--yes", "--confirm-database", db.name],
      {
        ...env,
        ...identity,
      },
    );
    expect(r.code).toBe(1);
    expect(await snapshot(db.sql)).toEqual(before);
  });

  test("a passphrase works as the simpler option", async () => {
    const before = await snapshot(db.sql);
    const pass = { BACKUP_AGE_RECIPIENTS: "", BACKUP_AGE_PASSPHRASE: "correct horse battery staple shinkei" };
    const file = await takeBackup(pass);
    expect(JSON.parse(await readFile(`${file}.manifest.json`, "utf8")).encryption).toEqual({ method: "passphrase" });
    await db.sql`delete from story_beats`;
    const r = await shinkei(
      ["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name, "--no-safety-backup"],
      {
        ...env,
        ...pass,
      },
    );
    expect(r).toSucceed();
    expect(await snapshot(db.sql)).toEqual(before);
  });

  test("through S3: the stored object holds no row content, and restores with the identity", async () => {
    const s3 = await TestS3.start();
    try {
      const before = await snapshot(db.sql);
      const s3env = { ...env, ...s3.env("enc/") };
      const file = await takeBackup(s3env);
      const list = await s3.client().send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: "enc/" }));
      const key = list.Contents!.map((o) => o.Key!).find((k) => k.endsWith(".age"))!;
      const object = Buffer.from(
        await (
          await s3.client().send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }))
        ).Body!.transformToByteArray(),
      );
      expect(object.includes(Buffer.from(SECRET))).toBe(false);
      expect(object.equals(await readFile(file))).toBe(true);
      await rm(dir, { recursive: true });
      await db.sql`delete from story_beats`;
      const r = await shinkei(
        ["backup", "--restore", "--allow-superuser", "--yes", "--confirm-database", db.name, "--no-safety-backup"],
        {
          ...s3env,
          BACKUP_AGE_IDENTITY: join(keys, "main.key"),
        },
      );
      expect(r).toSucceed();
      expect(await snapshot(db.sql)).toEqual(before);
    } finally {
      await s3.stop();
    }
  });

  test("a host with only public keys: backup check passes without drills, and says why", async () => {
    await sharedBackup();
    const r = await shinkei(["backup", "check"], env);
    expect(r).toSucceed();
    expect(r.stdout).toContain("drills not checked here: the backup is encrypted and this host holds no key");
    // Where the key is, the drill requirement applies again.
    const withKey = await shinkei(["backup", "check"], { ...env, BACKUP_AGE_IDENTITY: join(keys, "main.key") });
    expect(withKey.code).toBe(1);
    expect(withKey.stderr).toContain("no backup has passed a restore drill yet");
  });

  test("a key file with a secret-looking bad line: the error names the line, never any of its content", async () => {
    // A real key's layout with a broken checksum: age's own message would quote it whole.
    const secretLine = "AGE-SECRET-KEY-1QX7ZPQX7ZPSECRETPARTQX7ZPQX7ZPSECRETPARTQX7ZPQX7ZPSECRETPQX";
    const wrongPlace = join(keys, "recipients-with-a-private-key.txt");
    await Bun.write(wrongPlace, `# team keys\n${publicKey}\n${secretLine}\n`);
    const plainSecret = join(keys, "recipients-with-a-password.txt");
    await Bun.write(plainSecret, "password=hunter2hunter2-do-not-print\n");
    const r1 = await shinkei(["status"], { ...env, BACKUP_AGE_RECIPIENTS: wrongPlace });
    expect(r1.code).toBe(2);
    expect(r1.stderr.split("\n")[0]).toBe(
      `✖ BACKUP_AGE_RECIPIENTS file ${wrongPlace}: line 3 is a private key: it belongs in ` +
        `BACKUP_AGE_IDENTITY, never here`,
    );
    const r2 = await shinkei(["status"], { ...env, BACKUP_AGE_RECIPIENTS: plainSecret });
    expect(r2.code).toBe(2);
    expect(r2.stderr.split("\n")[0]).toBe(
      `✖ BACKUP_AGE_RECIPIENTS file ${plainSecret}: line 1 is not an age public key (age1...)`,
    );

    await sharedBackup();
    const badIdentity = join(keys, "broken-identity.key");
    await Bun.write(badIdentity, `# created: today\n${secretLine}\n`);
    const r3 = await shinkei(["backup", "verify"], { ...env, BACKUP_AGE_IDENTITY: badIdentity, SHINKEI_DEBUG: "1" });
    expect(r3.code).toBe(1);
    expect(r3.stderr).toContain(`private key 1 in ${badIdentity} is not a valid age key`);
    for (const r of [r1, r2, r3]) {
      for (const fragment of ["QX7ZP", "SECRETPART", "AGE-SECRET-KEY-1", "hunter2", "password="])
        expect(r.stderr + r.stdout).not.toContain(fragment);
    }
  });

  test("bad key configuration is a config error naming the variable", async () => {
    const r = await shinkei(["status"], { ...env, BACKUP_AGE_RECIPIENTS: "age1notakey" });
    expect(r.code).toBe(2);
    expect(r.stderr.split("\n")[0]).toMatch(/^✖ BACKUP_AGE_RECIPIENTS /);
  });
});
