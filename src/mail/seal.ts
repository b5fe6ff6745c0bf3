import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * A key that lives only in this process's memory (AES-256-GCM), for mail bodies carrying a live
 * code while they wait in the outbox: the database, its dumps, backups and WAL hold ciphertext only,
 * and nothing can read it once the process is gone. `id` names the key in the table (random, not
 * derived from it), so a server takes only the rows it can open.
 */
export class ProcessKey {
  readonly id = crypto.randomUUID();
  private readonly key = randomBytes(32);

  /** `body` sealed, bound to `context` (the envelope): moved to another address it no longer opens. */
  seal(body: string, context: string): Buffer {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    cipher.setAAD(Buffer.from(context));
    const sealed = Buffer.concat([cipher.update(body, "utf8"), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), sealed]);
  }

  /** The body, or an error when `sealed` was not made by this key for `context` (or was altered). */
  open(sealed: Buffer, context: string): string {
    const decipher = createDecipheriv("aes-256-gcm", this.key, sealed.subarray(0, 12));
    decipher.setAAD(Buffer.from(context));
    decipher.setAuthTag(sealed.subarray(12, 28));
    return Buffer.concat([decipher.update(sealed.subarray(28)), decipher.final()]).toString("utf8");
  }
}
