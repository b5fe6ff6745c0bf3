// PostgreSQL's own parser (libpg-query, compiled to WebAssembly). Its JavaScript entry point
// looks for the .wasm beside itself, which a compiled binary does not have: the module is
// embedded here as a file and instantiated from its bytes, so the parser works the same from source
// and from dist/shinkei.
// @ts-ignore -- the emscripten loader ships without types
import PgQueryModule from "libpg-query/wasm/libpg-query.js";
import wasmPath from "libpg-query/wasm/libpg-query.wasm" with { type: "file" };

type Module = {
  lengthBytesUTF8(s: string): number;
  stringToUTF8(s: string, ptr: number, max: number): void;
  UTF8ToString(ptr: number): string;
  getValue(ptr: number, type: string): number;
  _malloc(n: number): number;
  _free(ptr: number): void;
  _wasm_parse_query_raw(ptr: number): number;
  _wasm_free_parse_result(ptr: number): void;
};

/** One statement of a parse: its node (`{ CreateStmt: {...} }`) and where it is, in bytes. */
export type RawStmt = { stmt: Record<string, any>; stmt_location?: number; stmt_len?: number };
export type Parsed = { ok: true; stmts: RawStmt[] } | { ok: false; message: string; cursor: number };

/** Compiled once per process (about 20 ms of CPU); each grammar loaded is an instance of its own. */
let compiled: Promise<WebAssembly.Module> | undefined;

/**
 * An instance of the parser, with memory of its own (tens of MiB): each judge loads one and drops it
 * when done, so two judges at once in one process (a service's drills) never share or free each
 * other's. Nothing to unload: the instance goes with the last reference to it.
 */
export async function loadGrammar(): Promise<Grammar> {
  compiled ??= Bun.file(wasmPath)
    .bytes()
    .then((bytes) => WebAssembly.compile(bytes));
  // A failure is not kept: the next load (a long-running service's next drill) tries again.
  compiled.catch(() => (compiled = undefined));
  const wasm = await compiled;
  // emscripten's hook for bringing one's own module (it ignores a `wasmBinary` option in this
  // build). It waits for `done` alone, so a failed instantiation is raced in, not left to hang.
  let failed!: (e: unknown) => void;
  const failure = new Promise<never>((_, reject) => (failed = reject));
  const instantiateWasm = (
    imports: Record<string, Record<string, unknown>>,
    done: (instance: WebAssembly.Instance) => void,
  ) => {
    WebAssembly.instantiate(wasm, imports as never).then(done, failed);
    return {};
  };
  return new Grammar((await Promise.race([PgQueryModule({ instantiateWasm }), failure])) as Module);
}

export class Grammar {
  constructor(private readonly m: Module) {}
  /** Parse SQL text as the server would (PostgreSQL 18's grammar); locations are byte offsets. */
  parse(text: string): Parsed {
    const m = this.m;
    const size = m.lengthBytesUTF8(text) + 1;
    const input = m._malloc(size);
    m.stringToUTF8(text, input, size);
    const result = m._wasm_parse_query_raw(input);
    try {
      if (!result) throw new Error("the SQL parser ran out of memory");
      const error = m.getValue(result + 8, "i32");
      if (error) {
        const message = m.getValue(error, "i32");
        return {
          ok: false,
          message: message ? m.UTF8ToString(message) : "syntax error",
          cursor: m.getValue(error + 16, "i32"),
        };
      }
      const tree = m.getValue(result, "i32");
      return { ok: true, stmts: (JSON.parse(m.UTF8ToString(tree)) as { stmts?: RawStmt[] }).stmts ?? [] };
    } finally {
      m._free(input);
      if (result) m._wasm_free_parse_result(result);
    }
  }
}
