import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { canOpen, type AgeConfig } from "../storage/crypt.ts";
import { sha256File } from "../storage/files.ts";
import { unsealFrom } from "../storage/seal.ts";
import { finished, pump } from "../pg/tools.ts";
import { findTool } from "../pg/bin.ts";
import { baseDir, updateBaseManifest, type BaseBackup } from "./base.ts";

export type BaseVerification = {
  ok: boolean;
  at: string;
  problems: string[];
  pgVerifybackup: string | null;
  skipped?: string;
};

/**
 * Prove a base backup whole: both stored files against the SHA-256s in our manifest, then the
 * server's own check. pg_verifybackup reads a plain data directory (tar only from PostgreSQL 18),
 * so the backup is unpacked into a temporary folder for it, and `-n`: the WAL is in the archive,
 * not in the backup. Needs the backup's size in free space under the system's temporary folder.
 */
export async function verifyBaseBackup(
  backupDir: string,
  base: BaseBackup,
  age?: AgeConfig,
): Promise<BaseVerification> {
  const problems: string[] = [];
  const m = base.manifest;
  if ((await sha256File(base.path)) !== m.sha256) problems.push(`${m.file} does not match the SHA-256 in its manifest`);
  const bm = join(baseDir(backupDir), m.backupManifestFile);
  if ((await sha256File(bm).catch(() => "")) !== m.backupManifestSha256)
    problems.push(`${m.backupManifestFile} is missing or does not match its SHA-256`);
  let tool: string | null = null;
  // A host with public keys only can write encrypted backups but not read them: the hashes are all it can check.
  const skipped = canOpen(m.encryption, age)
    ? undefined
    : "pg_verifybackup not run: the backup is encrypted and this host holds no key to open it";
  if (problems.length === 0 && !skipped) {
    const dir = await mkdtemp(join(tmpdir(), "shinkei-verify-"));
    try {
      const plain = await unsealFrom(base.path, { encryption: m.encryption, age, name: m.file });
      const tar = Bun.spawn(["tar", "-x", "-f", "-", "-C", dir], { stdin: "pipe", stdout: "ignore", stderr: "pipe" });
      const exit = finished(tar);
      await pump(plain, tar.stdin).finally(() => tar.stdin.end());
      const t = await exit;
      if (t.code !== 0) problems.push(`unpacking ${m.file} failed: ${t.stderr}`);
      else {
        const found = await findTool("pg_verifybackup", Number(/^\d+/.exec(m.serverVersion)?.[0] ?? 0));
        tool = found.version;
        const p = Bun.spawn([found.path, "--no-parse-wal", dir], { stdout: "pipe", stderr: "pipe" });
        const r = await finished(p);
        if (r.code !== 0) problems.push(`pg_verifybackup: ${r.stderr || `exit ${r.code}`}`);
      }
    } catch (e) {
      problems.push((e as Error).message);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  const result: BaseVerification = {
    ok: problems.length === 0,
    at: new Date().toISOString(),
    problems,
    pgVerifybackup: tool,
    ...(skipped && { skipped }),
  };
  // The off-site copier may have recorded its copy while this ran.
  await updateBaseManifest(base.path, m, (now) => ({ ...now, verified: result }));
  return result;
}
