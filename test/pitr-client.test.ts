import { expect, test } from "bun:test";
import { chmod, mkdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { restoreClient, runnableByAll } from "../src/pitr/instance.ts";
import { tempDir } from "./support/fixtures.ts";

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

test("a program every user reaches and no one else can change is runnable by all where it lies", async () => {
  expect(await runnableByAll(await program(0o755))).toBe(true);
  // In a sticky folder everyone may write (as /tmp): no one else may rename or remove what we own.
  expect(await runnableByAll(await program(0o1777))).toBe(true);
  // Through a symlink: what counts is the file it names, and the folders above that.
  const link = join(await folder(0o755), "shinkei");
  await symlink(await program(0o755), link);
  expect(await runnableByAll(link)).toBe(true);
});

test("a program another user cannot reach, or could change, is not", async () => {
  expect(await runnableByAll(await program(0o700))).toBe(false); // a root-only folder
  expect(await runnableByAll(await program(0o755, 0o700))).toBe(false); // not runnable by others
  expect(await runnableByAll(await program(0o755, 0o775))).toBe(false); // its group may write it
  expect(await runnableByAll(await program(0o777))).toBe(false); // anyone may replace it
  expect(await runnableByAll(await program(0o775))).toBe(false); // its folder's group may
  expect(await runnableByAll(join(await folder(0o755), "missing"))).toBe(false);
});

test("restore_command runs the program where it lies when all may run it, else a copy of our own", async () => {
  const root = await tempDir("client-instance");
  for (const d of ["a", "b", "c"]) await mkdir(join(root, d));
  const reachable = await program(0o755);
  expect(await restoreClient(join(root, "a"), [reachable])).toEqual([reachable]);

  // In a root-only folder: a hard link in the instance's folder (the file itself may be run by all),
  // and for a file only its owner may run, a copy that all may.
  for (const [d, mode, linked] of [
    ["b", 0o755, true],
    ["c", 0o700, false],
  ] as const) {
    const hidden = await program(0o700, mode);
    const [copy] = await restoreClient(join(root, d), [hidden]);
    expect(copy).toBe(join(root, d, "client", "shinkei"));
    expect(await readFile(copy!, "utf8")).toBe(await readFile(hidden, "utf8"));
    expect((await stat(copy!)).ino === (await stat(hidden)).ino).toBe(linked);
    expect((await stat(copy!)).mode & 0o777).toBe(linked ? mode : 0o755);
    expect((await stat(join(root, d, "client"))).mode & 0o777).toBe(0o755);
  }
});
