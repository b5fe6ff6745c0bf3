// Tests read many JSON bodies of known shape; `any` here keeps them readable.
interface Response {
  json(): Promise<any>;
}
