import { Transform } from "node:stream";

const BLOCK = 512;

/**
 * Pass a tar stream through untouched while keeping one member's bytes. pg_basebackup writing a
 * tar to stdout puts its backup_manifest inside the stream as the last member; we keep the
 * archive whole and read the manifest on the way past, with no second pass over the backup.
 */
export function tarMemberTap(member: string, limitBytes = 64 * 1024 * 1024) {
  let header = Buffer.alloc(0);
  let remaining = 0; // data + padding bytes left in the current member
  let dataLeft = 0;
  let capturing = false;
  let captured: Buffer[] | null = null;
  let members = 0;
  let failure: Error | null = null;

  function readHeader(h: Buffer) {
    if (h.every((b) => b === 0)) return; // end-of-archive blocks
    const text = (from: number, len: number) =>
      h
        .subarray(from, from + len)
        .toString("utf8")
        .replace(/\0.*$/s, "");
    const prefix = text(257, 6).startsWith("ustar") ? text(345, 155) : "";
    const name = prefix ? `${prefix}/${text(0, 100)}` : text(0, 100);
    let size: number;
    if (h[124]! & 0x80) {
      // GNU base-256 size for members over 8 GiB
      size = 0;
      for (let i = 125; i < 136; i++) size = size * 256 + h[i]!;
    } else size = parseInt(text(124, 12).trim() || "0", 8);
    if (!Number.isFinite(size) || size < 0) throw new Error(`unreadable tar header for ${name}`);
    members++;
    dataLeft = size;
    remaining = Math.ceil(size / BLOCK) * BLOCK;
    capturing = name === member || name === `./${member}`;
    if (capturing) {
      if (size > limitBytes) throw new Error(`${member} is ${size} bytes, more than we accept`);
      captured = [];
    }
  }

  const transform = new Transform({
    transform(chunk: Buffer, _e, done) {
      try {
        let offset = 0;
        while (offset < chunk.length) {
          if (remaining > 0) {
            const take = Math.min(remaining, chunk.length - offset);
            if (capturing && dataLeft > 0) {
              captured!.push(chunk.subarray(offset, offset + Math.min(take, dataLeft)));
            }
            dataLeft = Math.max(0, dataLeft - take);
            remaining -= take;
            offset += take;
            continue;
          }
          const need = BLOCK - header.length;
          const take = Math.min(need, chunk.length - offset);
          header = Buffer.concat([header, chunk.subarray(offset, offset + take)]);
          offset += take;
          if (header.length === BLOCK) {
            readHeader(header);
            header = Buffer.alloc(0);
          }
        }
      } catch (e) {
        failure = e as Error;
      }
      done(null, chunk);
    },
  });
  return {
    transform,
    members: () => members,
    /** The member's bytes, or null when the stream had none (or was not a readable tar). */
    captured: (): Buffer | null => (failure || !captured ? null : Buffer.concat(captured)),
  };
}
