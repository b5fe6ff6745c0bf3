// Mail templates (`*.txt.tmpl`, `*.html.tmpl`), imported as text. Not `.html`: Bun types those as page bundles.
declare module "*.tmpl" {
  const text: string;
  export default text;
}
