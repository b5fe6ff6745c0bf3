import { describe, expect, test } from "bun:test";
import { ScriptGuard } from "../src/backup/script.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Run a script through the guard in chunks of `size` bytes; what psql would receive. */
function guard(script: string, size = 1 << 20): string {
  const g = new ScriptGuard();
  const bytes = enc.encode(script);
  const parts: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) parts.push(...g.push(bytes.subarray(i, i + size)));
  parts.push(...g.end());
  return dec.decode(Buffer.concat(parts));
}

const refused = (script: string) => {
  try {
    guard(script);
  } catch (e) {
    return (e as { code?: string; message: string }).code === "RESTORE_UNSAFE" ? (e as Error).message : `other error: ${(e as Error).message}`;
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
    ["SELECT :'HOST';\n", "variable reference"],
    ["COPY t FROM PROGRAM 'id';\n", "PROGRAM"],
    ["COPY t FROM stdin; COMMIT;\nx\n\\.\n", "after COPY"],
    ["COPY t FROM stdin;\n1\n", "never ends"],
    ["SELECT 'unterminated;\n", "unterminated"],
    ["SELECT 1\n", "without its closing semicolon"],
    ["SELECT 'a\\'; COMMIT; --';\n", "standard_conforming_strings"],
    ["BEGIN;\nDROP TABLE users;\nCOMMIT;\n", "inside a large-object block"],
    ["BEGIN;\nSELECT pg_catalog.lo_open('1', 131072);\n", "without its COMMIT"],
    // In SJIS or BIG5 a multibyte character can end in the backslash byte: where this string ends is ambiguous.
    ["SELECT E'\u00fc\\'; COMMIT; --';\n", "multibyte"],
  ])("refuses %j", (script, why) => {
    expect(refused(script)).toContain(why);
  });

  test.each([
    "SELECT 'COMMIT; \\! rm -rf /';\n",
    "SELECT E'it\\'s; COMMIT';\n",
    "SELECT 'it''s; COMMIT';\n",
    "SELECT \"COMMIT;\" FROM t;\n",
    "-- COMMIT;\nSELECT 1;\n",
    "/* nested /* COMMIT; */ still comment; */ SELECT 1;\n",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN COMMIT; RETURN 1; END $$;\n",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN $x$;$x$; END $body$;\n",
    "CREATE FUNCTION public.f() RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN true THEN 1 ELSE 2 END;\n SELECT 2;\nEND;\n",
    "SELECT x::text, y::int FROM t WHERE z = $1;\n",
    "SAVEPOINT a;\nROLLBACK TO SAVEPOINT a;\nRELEASE a;\n",
    "COPY public.t (a, b) FROM stdin;\nCOMMIT;\t\\! not a command, data\n\\.\nSELECT 1;\n",
    "SELECT 'é';\nSELECT E'\\n';\n",
  ])("passes %j unchanged", (script) => {
    expect(guard(script)).toBe(script);
  });

  test("pg_dump's large-object blocks lose their BEGIN and COMMIT; the dump's \\restrict lines are left out", () => {
    const dump = "\\restrict abc123\nSET x = 1;\nBEGIN;\n\nSELECT pg_catalog.lo_open('16400', 131072);\nSELECT pg_catalog.lowrite(0, '\\x68656c6c6f');\nSELECT pg_catalog.lo_close(0);\n\nCOMMIT;\n\n\\unrestrict abc123\n";
    const out = guard(dump);
    expect(out).not.toContain("BEGIN");
    expect(out).not.toContain("COMMIT");
    expect(out).not.toContain("restrict");
    expect(out).toContain("SELECT pg_catalog.lowrite(0, '\\x68656c6c6f');");
  });

  test("the result does not depend on how the stream is cut into chunks", () => {
    const script = [
      "\\restrict k1\n",
      "SET client_encoding = 'UTF8';\n",
      "CREATE FUNCTION g() RETURNS text LANGUAGE plpgsql AS $fn$ begin return 'x;y'; end $fn$;\n",
      "COMMENT ON TABLE t IS 'with ''quote'' and ; semicolon';\n",
      "COPY public.t (id, s) FROM stdin;\n1\ta'b\\\\c\n2\tx\\ty\n\\.\n",
      "BEGIN;\nSELECT pg_catalog.lo_open('1', 131072);\nSELECT pg_catalog.lo_close(0);\nCOMMIT;\n",
      "/* é */ SELECT E'ü \\'' AS \"q\"\"uoted\";\n",
      "\\unrestrict k1\n",
    ].join("");
    const whole = guard(script);
    for (const size of [1, 2, 3, 5, 7, 13, 64]) expect(guard(script, size)).toBe(whole);
  });
});
