import { expect, test } from "bun:test";
import { chmod, chown, mkdir, readFile, realpath, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { restoreClient, runnableByAll } from "../src/pitr/instance.ts";
import { tempDir } from "./support/fixtures.ts";

/** A user who is neither root nor us (nobody's uid on Debian; any other one serves). */
const OTHER_UID = (process.getuid?.() ?? 0) === 65534 ? 65533 : 65534;
const asRoot = process.getuid?.() === 0;

/** A folder of mode `mode` that every user may pass through on the way to it. */
async function folder(mode: number) {
  const parent = await tempDir("client");
  await chmod(parent, 0o755);
  const dir = join(parent, "bin");
  await mkdir(dir);
  await chmod(dir, mode);
  return dir;
}

/** A program `shinkei` of mode `mode` in a new folder of mode `folderMode`. */
async function program(folderMode: number, mode = 0o755) {
  const dir = await folder(0o755);
  const path = join(dir, "shinkei");
  await writeFile(path, "#!/bin/sh\necho the program\n");
  await chmod(path, mode);
  await chmod(dir, folderMode);
  return path;
}

test("a program every user reaches and no one else can change runs where it really lies", async () => {
  const plain = await program(0o755);
  expect(await runnableByAll(plain)).toBe(await realpath(plain));
  // In a sticky folder everyone may write (as /tmp): no one else may rename or remove what we own.
  const sticky = await program(0o1777);
  expect(await runnableByAll(sticky)).toBe(await realpath(sticky));
  // Through a symlink: what counts, and what runs, is the file it names.
  const link = join(await folder(0o755), "shinkei");
  await symlink(plain, link);
  expect(await runnableByAll(link)).toBe(await realpath(plain));
});

test("a program another user cannot reach, or could change, is not", async () => {
  expect(await runnableByAll(await program(0o700))).toBeNull(); // a root-only folder
  expect(await runnableByAll(await program(0o701))).toBeNull(); // its group may not pass
  expect(await runnableByAll(await program(0o755, 0o700))).toBeNull(); // not runnable by others
  expect(await runnableByAll(await program(0o755, 0o711))).toBeNull(); // not readable by others
  expect(await runnableByAll(await program(0o755, 0o705))).toBeNull(); // not by its group
  expect(await runnableByAll(await program(0o755, 0o775))).toBeNull(); // its group may write it
  expect(await runnableByAll(await program(0o777))).toBeNull(); // anyone may replace it
  expect(await runnableByAll(await program(0o775))).toBeNull(); // its folder's group may
  expect(await runnableByAll(join(await folder(0o755), "missing"))).toBeNull();
  // A symlink anyone may follow, to a program in a root-only folder.
  const link = join(await folder(0o755), "shinkei");
  await symlink(await program(0o700), link);
  expect(await runnableByAll(link)).toBeNull();
});

test.skipIf(!asRoot)("a program or folder another user owns is not: that user could change what runs", async () => {
  const theirs = await program(0o755);
  await chown(theirs, OTHER_UID, 0);
  expect(await runnableByAll(theirs)).toBeNull();
  const inTheirFolder = await program(0o755);
  await chown(join(inTheirFolder, ".."), OTHER_UID, 0);
  expect(await runnableByAll(inTheirFolder)).toBeNull();
});

test("restore_command runs the program where it lies when all may run it, else a link or copy of ours", async () => {
  const root = await tempDir("client-instance");
  const reachable = await program(0o755);
  await mkdir(join(root, "as-is"));
  expect(await restoreClient(join(root, "as-is"), [reachable])).toEqual([await realpath(reachable)]);

  // In a root-only folder: a hard link in the instance's folder when the file itself is runnable by
  // all and no one else may change it; a copy that all may run when only its owner may run it, or
  // when its group may write it (a link would hand that group our binary through a folder it reaches).
  const cases: [string, number, boolean][] = [
    ["link", 0o755, true],
    ["owner-only", 0o700, false],
    ["group-writable", 0o775, false],
  ];
  for (const [d, mode, linked] of cases) {
    await mkdir(join(root, d));
    const hidden = await program(0o700, mode);
    const [client] = await restoreClient(join(root, d), [hidden]);
    expect(client).toBe(join(root, d, "client", "shinkei"));
    expect(await readFile(client!, "utf8")).toBe(await readFile(hidden, "utf8"));
    expect((await stat(client!)).ino === (await stat(hidden)).ino).toBe(linked);
    expect((await stat(client!)).mode & 0o777).toBe(linked ? mode : 0o755);
    expect((await stat(join(root, d, "client"))).mode & 0o777).toBe(0o755);
  }
});

test.skipIf(!asRoot)("a program another user owns is copied, never linked", async () => {
  const root = await tempDir("client-theirs");
  const hidden = await program(0o700);
  await chown(hidden, OTHER_UID, 0);
  const [client] = await restoreClient(root, [hidden]);
  expect((await stat(client!)).ino).not.toBe((await stat(hidden)).ino);
  expect((await stat(client!)).uid).toBe(0);
});
