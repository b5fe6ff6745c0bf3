import { loadGrammar, type Grammar, type RawStmt } from "./grammar.ts";
import { concatAll, refuse, ScriptGuard, type ScriptItem } from "./script.ts";
import { Rec, type Spool } from "./spool.ts";
import { collectEvery as collect } from "../memory.ts";

/**
 * The judge of a file to restore. Our splitter (script.ts) finds statements and COPY data; every
 * statement is then parsed by PostgreSQL's own grammar (grammar.ts), and the two must agree on
 * where each statement starts and ends. A statement passes only when it is exactly one statement
 * of a kind a restore may contain (ALLOWED), with allowed content: SET only for what pg_dump sets,
 * a top-level SELECT only for the catalog calls pg_dump writes, nothing that names the temporary
 * schema or the restore's guard, COPY only `COPY table (columns) FROM STDIN`, rebuilt from the
 * parse. What passes goes to the spool; nothing runs until the whole file has passed.
 */

/** Statement kinds a restore may contain: what pg_dump's plain format writes, and ordinary DDL/DML. */
const ALLOWED = new Set([
  // schema objects
  "CreateSchemaStmt",
  "CreateStmt",
  "CreateSeqStmt",
  "AlterSeqStmt",
  "ViewStmt",
  "CreateTableAsStmt",
  "RefreshMatViewStmt",
  "IndexStmt",
  "AlterTableStmt",
  "CreateFunctionStmt",
  "AlterFunctionStmt",
  "CreateTrigStmt",
  "RuleStmt",
  "CreateDomainStmt",
  "AlterDomainStmt",
  "CompositeTypeStmt",
  "CreateEnumStmt",
  "AlterEnumStmt",
  "CreateRangeStmt",
  "DefineStmt",
  "CreateConversionStmt",
  "CreateOpClassStmt",
  "CreateOpFamilyStmt",
  "AlterOpFamilyStmt",
  "CreateStatsStmt",
  "AlterStatsStmt",
  "CreatePolicyStmt",
  "AlterPolicyStmt",
  "CreateExtensionStmt",
  "CreateEventTrigStmt",
  "AlterEventTrigStmt",
  "CreateTransformStmt",
  "CreateAmStmt",
  "CreatePLangStmt",
  "CreateFdwStmt",
  "CreateForeignServerStmt",
  "CreateUserMappingStmt",
  "CreateForeignTableStmt",
  "AlterTSConfigurationStmt",
  "AlterTSDictionaryStmt",
  "CreatePublicationStmt",
  "AlterPublicationStmt",
  "CommentStmt",
  "SecLabelStmt",
  "GrantStmt",
  "AlterDefaultPrivilegesStmt",
  "AlterOwnerStmt",
  "AlterObjectSchemaStmt",
  "RenameStmt",
  "AlterCollationStmt",
  "AlterTypeStmt",
  "AlterOperatorStmt",
  "DropStmt",
  // data
  "InsertStmt",
  "UpdateStmt",
  "DeleteStmt",
  "TruncateStmt",
  // judged below
  "VariableSetStmt",
  "SelectStmt",
  "CopyStmt",
]);

/**
 * Settings pg_dump writes, and which values pass. standard_conforming_strings must stay on (the
 * splitter and the parser read backslashes as the server does only then); client_encoding stays
 * UTF8, the encoding the file was read in. role and session_authorization are not here.
 */
const SETTINGS: Record<string, (value: string) => boolean> = {
  statement_timeout: () => true,
  lock_timeout: () => true,
  idle_in_transaction_session_timeout: () => true,
  transaction_timeout: () => true,
  client_encoding: (v) => /^utf-?8$/i.test(v),
  standard_conforming_strings: (v) => /^(on|true|yes|1)$/i.test(v),
  check_function_bodies: () => true,
  xmloption: () => true,
  client_min_messages: () => true,
  row_security: () => true,
  default_tablespace: () => true,
  default_table_access_method: () => true,
  default_with_oids: (v) => /^(off|false|no|0)$/i.test(v),
  search_path: (v) => !TEMP_SCHEMA_IN.test(v),
};

/** Catalog calls pg_dump writes as a top-level SELECT: settings, sequences, large objects, statistics. */
const CALLS = new Set([
  "set_config",
  "setval",
  "lo_create",
  "lo_open",
  "lowrite",
  "lo_close",
  "lo_from_bytea",
  "lo_put",
  "pg_restore_relation_stats",
  "pg_restore_attribute_stats",
  "pg_restore_extended_stats",
]);

const BUILTIN_TYPES = new Set(["bytea", "text", "name", "oid", "regclass", "json", "jsonb"]);
const TEMP_SCHEMA = /^pg_(toast_)?temp(_\d+)?$/i;
const TEMP_SCHEMA_IN = /pg_(toast_)?temp/i;
/** The restore's guard (restore.ts) is named after this: no file may name it. */
export const GUARD_PREFIX = "shinkei_guard";

/** What the file creates (checked before COMMIT: nothing else may appear) and what its COPYs sent. */
export type Judged = {
  statements: number;
  /** "schema.name" (or "*.name" when unqualified) of relations, functions, and "table/trigger" of triggers. */
  relations: Set<string>;
  functions: Set<string>;
  triggers: Set<string>;
  eventTriggers: Set<string>;
  /** Rows each COPY target was sent, by "schema.name". */
  copied: Map<string, { schema: string; name: string; rows: number }>;
};

type Pending = { item: Extract<ScriptItem, { kind: "statement" }>; start: number };

const BATCH_BYTES = 256 * 1024;
const BATCH_STATEMENTS = 1000;

export class Judge {
  private splitter = new ScriptGuard();
  private batch: Pending[] = [];
  private batchBytes = 0;
  private decoder = new TextDecoder();
  /** The COPY whose data is streaming, by "schema.name". */
  private copyTarget: { schema: string; name: string } | undefined;
  /** The line of the statement being judged: it goes to the spool, for the load's errors. */
  private line = 0;
  readonly judged: Judged = {
    statements: 0,
    relations: new Set(),
    functions: new Set(),
    triggers: new Set(),
    eventTriggers: new Set(),
    copied: new Map(),
  };

  constructor(
    private spool: Spool,
    private grammar: Grammar,
  ) {}

  push(chunk: Uint8Array) {
    this.take(this.splitter.push(chunk));
  }

  end(): Judged {
    this.take(this.splitter.end());
    this.judgeBatch();
    return this.judged;
  }

  private take(items: ScriptItem[]) {
    for (const item of items) {
      if (item.kind === "statement") {
        this.batch.push({ item, start: this.batchBytes });
        this.batchBytes += item.bytes.length;
        // A COPY is judged (and rebuilt) before its data is spooled behind it.
        if (item.copy || this.batchBytes >= BATCH_BYTES || this.batch.length >= BATCH_STATEMENTS) this.judgeBatch();
      } else if (item.kind === "data") {
        this.spool.data(item.bytes);
        collectEvery(item.bytes.length);
      } else {
        this.spool.endCopy();
        const t = this.copyTarget!;
        const key = `${t.schema}.${t.name}`;
        const sent = this.judged.copied.get(key);
        if (sent) sent.rows += item.rows;
        else this.judged.copied.set(key, { ...t, rows: item.rows });
        this.copyTarget = undefined;
      }
    }
  }

  /**
   * Many statements parsed at once (a parse per statement through WebAssembly is slow for a file
   * of many small ones): the parser's locations must then fall exactly on the splitter's bounds.
   */
  private judgeBatch() {
    if (this.batch.length === 0) return;
    const batch = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    const bytes = concatAll(batch.map((p) => p.item.bytes));
    const parsed = this.grammar.parse(this.decoder.decode(bytes));
    if (!parsed.ok) return this.explainSyntax(batch);
    let k = 0;
    for (const { item, start } of batch) {
      const end = start + item.bytes.length; // the byte after this statement's `;`
      const mine: RawStmt[] = [];
      while (k < parsed.stmts.length && (parsed.stmts[k]!.stmt_location ?? 0) < end) mine.push(parsed.stmts[k++]!);
      const where = `line ${item.line}`;
      if (item.empty) {
        if (mine.length) disagree(where);
        continue;
      }
      const only = mine[0];
      if (
        mine.length !== 1 ||
        (only!.stmt_location ?? 0) < start ||
        (only!.stmt_location ?? 0) + (only!.stmt_len ?? 0) !== end - 1
      )
        disagree(where);
      const text = this.decoder.decode(bytes.subarray(only!.stmt_location ?? 0, end - 1));
      this.line = item.line;
      this.judgeStatement(only!.stmt, item.copy, text, where);
    }
    if (k !== parsed.stmts.length) disagree(`line ${batch.at(-1)!.item.line}`);
  }

  /** The batch did not parse: find the statement that does not, for a message that names its line. */
  private explainSyntax(batch: Pending[]): never {
    for (const { item } of batch) {
      const one = this.grammar.parse(item.text);
      if (!one.ok) refuse(`a statement PostgreSQL's grammar does not accept (line ${item.line}): ${one.message}`);
    }
    refuse(`statements PostgreSQL's grammar reads differently together than apart (line ${batch[0]!.item.line})`);
  }

  private judgeStatement(node: Record<string, any>, splitterCopy: boolean, text: string, where: string) {
    const kind = Object.keys(node)[0]!;
    const body = node[kind];
    if (!ALLOWED.has(kind)) refuse(`${describe(kind, text)} (${where}): a restore may not contain it`);
    if ((kind === "CopyStmt") !== splitterCopy) disagree(where);
    checkNames(body, where);
    this.judged.statements++;
    switch (kind) {
      case "VariableSetStmt":
        return this.setting(body, text, where);
      case "SelectStmt":
        return this.select(body, text, where);
      case "CopyStmt":
        return this.copy(body, where);
      case "CreateTrigStmt":
        // A deferred trigger would run its code at COMMIT, after every check of what the load did.
        if (body.deferrable || body.initdeferred)
          refuse(`${short(text)} (${where}): a deferrable trigger would run after the restore's checks`);
        break;
      case "RenameStmt":
      case "GrantStmt":
      case "CommentStmt":
      case "AlterOwnerStmt":
      case "SecLabelStmt":
        // A restore loads into one database: renaming, granting on, commenting on or giving away a
        // database (this one or another) is not its business, and no check after the load looks there.
        if ([body.renameType, body.objtype, body.objectType].includes("OBJECT_DATABASE"))
          refuse(`${short(text)} (${where}): a restore may not change a database itself`);
        break;
      case "DropStmt":
        // Both would take the restore's guard with them (it lives in the temporary schema).
        if (body.removeType === "OBJECT_SCHEMA" && JSON.stringify(body).match(TEMP_SCHEMA_IN))
          refuse(`${short(text)} (${where})`);
        break;
    }
    this.define(kind, body);
    this.spool.text(kind === "CreateExtensionStmt" ? Rec.Extension : Rec.Statement, text, this.line);
  }

  private setting(body: any, text: string, where: string) {
    const name = String(body.name ?? "").toLowerCase();
    const check = SETTINGS[name];
    if (body.kind !== "VAR_SET_VALUE" || !check)
      refuse(`${short(text)} (${where}): a restore sets only what pg_dump sets`);
    const values = (body.args ?? []).map(constant);
    if (values.some((v: string | undefined) => v === undefined || !check(v)))
      refuse(`${short(text)} (${where}): a value a restore may not set`);
    this.spool.text(Rec.Statement, text, this.line);
  }

  private select(body: any, text: string, where: string) {
    const refused = () =>
      refuse(
        `${short(text)} (${where}): a top-level SELECT may only call what pg_dump writes (set_config, ` +
          `setval, large objects)`,
      );
    const { targetList, fromClause, ...rest } = body;
    for (const [k, v] of Object.entries(rest))
      if (!(k === "limitOption" && v === "LIMIT_OPTION_DEFAULT") && !(k === "op" && v === "SETOP_NONE")) refused();
    if (targetList?.length !== 1 || targetList[0].ResTarget?.name) refused();
    let call = targetList[0].ResTarget.val?.FuncCall;
    // pg_dump 18 writes statistics as `SELECT * FROM pg_catalog.pg_restore_relation_stats(...)`.
    if (fromClause) {
      const star = targetList[0].ResTarget.val?.ColumnRef?.fields;
      const range = fromClause.length === 1 ? fromClause[0].RangeFunction : undefined;
      const items = range?.functions?.length === 1 ? range.functions[0].List?.items : undefined;
      if (
        star?.length !== 1 ||
        !star[0].A_Star ||
        !range ||
        Object.keys(range).some((k) => k !== "functions") ||
        items?.length !== 2 ||
        Object.keys(items[1]).length
      )
        refused();
      call = items[0].FuncCall;
      const name = call?.funcname?.[1]?.String?.sval;
      if (
        name !== "pg_restore_relation_stats" &&
        name !== "pg_restore_attribute_stats" &&
        name !== "pg_restore_extended_stats"
      )
        refused();
    }
    if (!call) refused();
    const names = (call.funcname ?? []).map((n: any) => n.String?.sval);
    if (names.length !== 2 || names[0] !== "pg_catalog" || !CALLS.has(names[1])) refused();
    for (const [k] of Object.entries(call)) if (!["funcname", "args", "funcformat", "location"].includes(k)) refused();
    const args = (call.args ?? []).map(constant);
    if (args.some((a: string | undefined) => a === undefined)) refused();
    if (names[1] === "set_config") {
      const check = SETTINGS[String(args[0]).toLowerCase()];
      if (!check || !check(String(args[1]))) refuse(`${short(text)} (${where}): a restore sets only what pg_dump sets`);
    }
    this.spool.text(Rec.Statement, text, this.line);
  }

  /**
   * Only `COPY table [(columns)] FROM STDIN`, and it is rebuilt from the parse: no option of the
   * file reaches the server.
   */
  private copy(body: any, where: string) {
    const rel = body.relation;
    const allowed = new Set(["relation", "attlist", "is_from"]);
    if (!body.is_from || !rel || rel.catalogname || Object.keys(body).some((k) => !allowed.has(k))) {
      refuse(`a COPY other than pg_dump's COPY table FROM stdin (${where})`);
    }
    const columns = (body.attlist ?? []).map((c: any) => quoteIdent(c.String.sval));
    const schema = rel.schemaname ?? "*";
    const table = `${rel.schemaname ? `${quoteIdent(rel.schemaname)}.` : ""}${quoteIdent(rel.relname)}`;
    this.copyTarget = { schema, name: rel.relname };
    this.spool.text(Rec.Copy, `COPY ${table}${columns.length ? ` (${columns.join(", ")})` : ""} FROM STDIN`, this.line);
  }

  private define(kind: string, body: any) {
    const j = this.judged;
    switch (kind) {
      case "CreateStmt":
      case "CreateForeignTableStmt":
        j.relations.add(relKey(kind === "CreateStmt" ? body.relation : body.base.relation));
        break;
      case "CreateSeqStmt":
        j.relations.add(relKey(body.sequence));
        break;
      case "ViewStmt":
        j.relations.add(relKey(body.view));
        break;
      case "CreateTableAsStmt":
        j.relations.add(relKey(body.into.rel));
        break;
      case "CreateFunctionStmt":
        j.functions.add(nameKey(body.funcname));
        break;
      case "DefineStmt":
        if (body.kind === "OBJECT_AGGREGATE") j.functions.add(nameKey(body.defnames));
        break;
      case "CreateTrigStmt":
        j.triggers.add(`${body.relation.relname}/${body.trigname}`);
        break;
      case "CreateEventTrigStmt":
        j.eventTriggers.add(body.trigname);
        break;
    }
  }
}

/**
 * Names in the tree: nothing may be qualified with the temporary schema (where the guard lives)
 * or name the guard. Function bodies and other strings are checked for the guard's name only.
 */
function checkNames(node: unknown, where: string) {
  const walk = (v: unknown, key: string) => {
    if (typeof v === "string") {
      if (v.toLowerCase().includes(GUARD_PREFIX)) refuse(`a reference to the restore's own guard (${where})`);
      if (key === "schemaname" && TEMP_SCHEMA.test(v)) refuse(`a reference to the temporary schema ${v} (${where})`);
      // Temporary objects live beside the guard and leave with the session: pg_dump writes none.
      if (key === "relpersistence" && v === "t") refuse(`a temporary table, view or sequence (${where})`);
      return;
    }
    if (Array.isArray(v)) {
      // A qualified name is a list of String nodes: its first may not be the temporary schema.
      const first = (v[0] as any)?.String?.sval;
      if (typeof first === "string" && v.length > 1 && TEMP_SCHEMA.test(first))
        refuse(`a reference to the temporary schema ${first} (${where})`);
      for (const x of v) walk(x, key);
      return;
    }
    if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) walk(x, k);
  };
  walk(node, "");
}

/** A constant argument or value: a literal, maybe cast (`'x'::bytea`), as text; undefined for anything else. */
function constant(node: any): string | undefined {
  if (node?.TypeCast) {
    // Only to built-in types: a cast to a type of the file's (a domain with a CHECK) would run its code.
    const names = (node.TypeCast.typeName?.names ?? []).map((n: any) => n.String?.sval);
    if (!(names.length === 2 && names[0] === "pg_catalog") && !(names.length === 1 && BUILTIN_TYPES.has(names[0])))
      return undefined;
    return constant(node.TypeCast.arg);
  }
  const c = node?.A_Const;
  if (!c) return undefined;
  if (c.isnull) return "";
  if (c.sval) return c.sval.sval ?? "";
  if (c.ival) return String(c.ival.ival ?? 0);
  if (c.fval) return String(c.fval.fval);
  if (c.boolval) return String(c.boolval.boolval ?? false);
  if (c.bsval) return String(c.bsval.bsval);
  return "0"; // an integer constant 0 is written without its value
}

function relKey(rel: any): string {
  return `${rel.schemaname ?? "*"}.${rel.relname}`;
}

function nameKey(list: any[]): string {
  const parts = list.map((n) => n.String?.sval);
  return parts.length > 1 ? `${parts.at(-2)}.${parts.at(-1)}` : `*.${parts[0]}`;
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function short(text: string): string {
  return JSON.stringify(text.replace(/\s+/g, " ").slice(0, 60));
}

function describe(kind: string, text: string): string {
  return `${short(text)} (${kind.replace(/Stmt$/, "")})`;
}

function disagree(where: string): never {
  refuse(`a statement whose bounds PostgreSQL's grammar reads differently from the restore's splitter (${where})`);
}

/**
 * With the parser's WebAssembly memory in the process (its 128 MiB heap, which JavaScriptCore
 * counts as live, even once the parser is let go), the garbage of a streamed dump (every chunk is
 * new memory) piles up far longer: 380 MiB at the peak of a 1 GB dump instead of 95, measured, and
 * growing with the dump. A young-generation collection every 8 MiB streamed is not
 * enough; a full one is (about 20 ms in the CLI), so one is made only when the process is above
 * MEMORY_BUDGET: a dozen for a 1 GB restore, and its peak stays flat under 150 MiB.
 */
const MEMORY_BUDGET = 128 << 20;
export const collectEvery = (bytes: number) => collect(bytes, MEMORY_BUDGET);

/**
 * A chunk of the stream, once judged and its COPY data written to the spool, is referenced by
 * nothing: its memory is given back now (its buffer detached) rather than when the garbage
 * collector gets to it, which with the parser loaded is long after (tens of MiB of chunks at a
 * time). Only a chunk that is its buffer's whole view is released: another view may share it.
 */
function release(chunk: Uint8Array) {
  const buffer = chunk.buffer as ArrayBuffer & { transfer?: (length: number) => ArrayBuffer };
  if (chunk.byteOffset === 0 && chunk.byteLength === buffer.byteLength && typeof buffer.transfer === "function")
    buffer.transfer(0);
}

/** A grammar loading ahead of the judge that will take it (prepareJudge). */
let ready: Promise<Grammar> | undefined;

/**
 * Start loading PostgreSQL's grammar now (about 50 ms, much of it off the main thread), so it
 * overlaps what a restore does before judging; the next judgeScript takes it.
 */
export function prepareJudge(): void {
  ready ??= loadGrammar();
  ready.catch(() => {}); // a failure is judgeScript's to report
}

/** Decoded bytes judged from which the judge's garbage is collected before the load. */
const GC_AFTER_BYTES = 16 << 20;

/** Judge a whole stream into the spool; throws RESTORE_UNSAFE (having run nothing) on anything refused. */
export async function judgeScript(source: AsyncIterable<Uint8Array>, spool: Spool): Promise<Judged> {
  const read = { bytes: 0 };
  try {
    return await judgeAll(source, spool, read);
  } finally {
    // What judging left goes before the load starts, not at some later collection: tens of MiB for
    // a large file, and gigabytes of parse trees for a small one holding a huge statement (a 7.6 MiB
    // INSERT of 2 million rows: 2.4 GB, in the grammar's own memory). A small file whose judging
    // stayed small skips it: a full collection would cost its restore 5-15 ms of CPU.
    if (read.bytes >= GC_AFTER_BYTES || process.memoryUsage.rss() > MEMORY_BUDGET) Bun.gc(true);
  }
}

/** The judging itself: the grammar and the judge are referenced from here alone, gone once it returns. */
async function judgeAll(source: AsyncIterable<Uint8Array>, spool: Spool, read: { bytes: number }): Promise<Judged> {
  const grammar = ready ?? loadGrammar();
  ready = undefined;
  const judge = new Judge(spool, await grammar);
  for await (const chunk of source) {
    read.bytes += chunk.byteLength;
    judge.push(chunk);
    spool.flush();
    release(chunk);
  }
  const judged = judge.end();
  spool.flush(); // what the end added, written (and its space checked) before anything is sent
  return judged;
}
