declare module "*.sql" {
  const text: string;
  export default text;
}

/** The SQL parser's WebAssembly, embedded in the binary (src/backup/grammar.ts). */
declare module "*.wasm" {
  const path: string;
  export default path;
}
