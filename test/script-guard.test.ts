import { describe, expect, test } from "bun:test";
import { ScriptGuard, type ScriptItem } from "../src/backup/script.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Run a script through the guard in chunks of `size` bytes: the statements (trimmed) and COPY data it hands on. */
function guard(script: string | Uint8Array, size = 1 << 20): string[] {
  const g = new ScriptGuard();
  const bytes = typeof script === "string" ? enc.encode(script) : script;
  const items: ScriptItem[] = [];
  for (let i = 0; i < bytes.length; i += size) items.push(...g.push(bytes.subarray(i, i + size)));
  items.push(...g.end());
  const out: string[] = [];
  for (const it of items) {
    // COPY data may come in any split: adjacent pieces are one block.
    if (it.kind === "data" && out.at(-1)?.startsWith("data> ")) out[out.length - 1] += dec.decode(it.bytes);
    else
      out.push(
        it.kind === "statement"
          ? `${it.copy ? "COPY> " : ""}${it.text.trim()}`
          : it.kind === "data"
            ? `data> ${dec.decode(it.bytes)}`
            : "end-copy",
      );
  }
  return out;
}

const refused = (script: string | Uint8Array) => {
  try {
    guard(script);
  } catch (e) {
    return (e as { code?: string; message: string }).code === "RESTORE_UNSAFE"
      ? (e as Error).message
      : `other error: ${(e as Error).message}`;
  }
  return null;
};

describe("the restore script guard", () => {
  test.each([
    ["CREATE TABLE planted (x int); COMMIT; SELECT 1/0;\n", "transaction control"],
    ["commit;\n", "transaction control"],
    ["  End\n;\n", "transaction control"],
    ["ROLLBACK;\n", "transaction control"],
    ["rollback work;\n", "transaction control"],
    ["ABORT;\n", "transaction control"],
    ["BEGIN ISOLATION LEVEL SERIALIZABLE;\n", "transaction control"],
    ["START TRANSACTION;\n", "transaction control"],
    ["PREPARE TRANSACTION 'x';\n", "transaction control"],
    ["/* a */ COMMIT /* b */;\n", "transaction control"],
    ["DISCARD TEMP;\n", "restore's own guard"],
    ["DROP OWNED BY CURRENT_USER;\n", "restore's own guard"],
    ["\\! touch /tmp/owned\n", "meta-command"],
    ["SELECT 1;\n\\connect other\n", "meta-command"],
    ["\\set ON_ERROR_STOP off\n", "meta-command"],
    ["\\i /etc/passwd\n", "meta-command"],
    ["\\o /tmp/out\n", "meta-command"],
    ["\\copy t from program 'id'\n", "meta-command"],
    ["SELECT 1 \\g /tmp/x\n", "meta-command"],
    ["COPY t FROM PROGRAM 'id';\n", "COPY other than"],
    ["COPY t TO '/tmp/x';\n", "COPY other than"],
    // Found in review: a query copying out that mentions "FROM stdin" must not turn the next lines into data.
    ["COPY (WITH stdin AS (SELECT 1) SELECT * FROM stdin) TO STDOUT;\nROLLBACK;\n\\.\n", "COPY other than"],
    ["COPY t FROM stdin; COMMIT;\nx\n\\.\n", "after COPY"],
    // The server ends a `--` comment at a bare CR too: what follows on the line is read as SQL.
    ["COPY t FROM stdin -- x\r; ROLLBACK; SELECT 1\n;\n1\n\\.\n", "after COPY"],
    ["SELECT 1; -- x\rCOMMIT;\n", "transaction control"],
    ["COPY t FROM stdin;\n1\n", "never ends"],
    ["SELECT 'unterminated;\n", "unterminated"],
    ["SELECT 1\n", "without its closing semicolon"],
    ["BEGIN;\nDROP TABLE users;\nCOMMIT;\n", "inside a large-object block"],
    ["BEGIN;\nSELECT pg_catalog.lo_open('1', 131072);\n", "without its COMMIT"],
    // Found in review: psql glues everything after a non-ATOMIC BEGIN in CREATE FUNCTION into one query.
    [
      "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'select 1'; ROLLBACK; SELECT 1 AS end;\n",
      "BEGIN without ATOMIC",
    ],
    // Found in review: psql stops reading a line at a NUL byte, so the two would see different text.
    [enc.encode("SELECT 1;\0'\nROLLBACK;\n-- ';\n"), "NUL byte"],
    [new Uint8Array([...enc.encode("SELECT '"), 0xe9, ...enc.encode("';\n")]), "not UTF-8"],
  ] as [string | Uint8Array, string][])("refuses %j", (script, why) => {
    expect(refused(script)).toContain(why);
  });

  test.each([
    ["SELECT 'COMMIT; \\! rm -rf /';\n", ["SELECT 'COMMIT; \\! rm -rf /';"]],
    ["SELECT E'it\\'s; COMMIT';\n", ["SELECT E'it\\'s; COMMIT';"]],
    ["SELECT 'it''s; COMMIT';\n", ["SELECT 'it''s; COMMIT';"]],
    ["SELECT 'C:\\'; SELECT 2;\n", ["SELECT 'C:\\';", "SELECT 2;"]],
    ['SELECT "COMMIT;" FROM t;\n', ['SELECT "COMMIT;" FROM t;']],
    ["-- COMMIT;\nSELECT 1;\n", ["-- COMMIT;\nSELECT 1;"]],
    ["/* nested /* COMMIT; */ still comment; */ SELECT 1;\n", ["/* nested /* COMMIT; */ still comment; */ SELECT 1;"]],
    [
      "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN COMMIT; RETURN 1; END $$;\n",
      ["CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN COMMIT; RETURN 1; END $$;"],
    ],
    [
      "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN $x$;$x$; END $body$;\n",
      ["CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN $x$;$x$; END $body$;"],
    ],
    [
      "CREATE FUNCTION public.f() RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN " +
        "true THEN 1 ELSE 2 END;\n SELECT 2;\nEND;\n",
      [
        "CREATE FUNCTION public.f() RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN " +
          "true THEN 1 ELSE 2 END;\n SELECT 2;\nEND;",
      ],
    ],
    ["SELECT x::text, y::int FROM t WHERE z = $1;\n", ["SELECT x::text, y::int FROM t WHERE z = $1;"]],
    [
      "SAVEPOINT a;\nROLLBACK TO SAVEPOINT a;\nRELEASE a;\n",
      ["SAVEPOINT a;", "ROLLBACK TO SAVEPOINT a;", "RELEASE a;"],
    ],
    [
      "COPY public.t (a, b) FROM stdin;\nCOMMIT;\t\\! not a command, data\n\\.\nSELECT 1;\n",
      ["COPY> COPY public.t (a, b) FROM stdin;", "data> COMMIT;\t\\! not a command, data\n", "end-copy", "SELECT 1;"],
    ],
    ["SELECT 'é';\nSELECT E'\\n';\n", ["SELECT 'é';", "SELECT E'\\n';"]],
  ] as [string, string[]][])("passes %j as whole statements", (script, statements) => {
    expect(guard(script)).toEqual(statements);
  });

  test("pg_dump's large-object blocks lose their BEGIN and COMMIT; the dump's \\restrict lines are left out", () => {
    const dump =
      "\\restrict abc123\nSET x = 1;\nBEGIN;\n\nSELECT pg_catalog.lo_open('16400', 131072);\nSELECT " +
      "pg_catalog.lowrite(0, '\\x68656c6c6f');\nSELECT pg_catalog.lo_close(0);\n\nCOMMIT;\n\n\\unrestrict " +
      "abc123\n";
    expect(guard(dump)).toEqual([
      "SET x = 1;",
      "SELECT pg_catalog.lo_open('16400', 131072);",
      "SELECT pg_catalog.lowrite(0, '\\x68656c6c6f');",
      "SELECT pg_catalog.lo_close(0);",
    ]);
  });

  test("the result does not depend on how the stream is cut into chunks", () => {
    const script = [
      "\\restrict k1\n",
      "SET client_encoding = 'UTF8';\n",
      "CREATE FUNCTION g() RETURNS text LANGUAGE plpgsql AS $fn$ begin return 'x;y'; end $fn$;\n",
      "COMMENT ON TABLE t IS 'with ''quote'' and ; semicolon';\n",
      "COPY public.t (id, s) FROM stdin;\n1\ta'b\\\\c\n2\tx\\ty\n\\.\n",
      "BEGIN;\nSELECT pg_catalog.lo_open('1', 131072);\nSELECT pg_catalog.lo_close(0);\nCOMMIT;\n",
      '/* é */ SELECT E\'ü\\\'\' AS "q""uoted";\n',
      "\\unrestrict k1\n",
    ].join("");
    const whole = guard(script);
    expect(whole.length).toBe(9);
    for (const size of [1, 2, 3, 5, 7, 13, 64]) expect(guard(script, size)).toEqual(whole);
  });

  test("comments held for a statement are refused past 256 MiB, not gathered without end", () => {
    // A few hundred KB of zstd decompress to gigabytes of comment lines: before, every byte was
    // held until the next `;` (5 GB of memory for a 420 KB file, then restored).
    const g = new ScriptGuard();
    const line = enc.encode(`-- ${"x".repeat((64 << 10) - 4)}\n`);
    let fed = 0;
    let error: Error | undefined;
    try {
      while (fed < 300 << 20) {
        g.push(line);
        fed += line.length;
      }
      g.push(enc.encode("SELECT 1;\n"));
      g.end();
    } catch (e) {
      error = e as Error;
    }
    expect(error?.message).toContain("a statement of more than 256 MiB, with the comments before it");
    expect(fed).toBeLessThanOrEqual((256 << 20) + line.length);
    // A statement under the bound, comments and all, passes as before.
    expect(guard(`${`-- ${"c".repeat(1000)}\n`.repeat(1000)}SELECT 1;\n`)).toEqual([
      expect.stringContaining("SELECT 1;"),
    ]);
  });
});
