// Tests read many JSON bodies of known shape; `any` here keeps them readable.
interface Response {
  json(): Promise<any>;
}

declare module "s3rver" {
  export default class S3rver {
    constructor(options: {
      address?: string;
      port?: number;
      silent?: boolean;
      directory: string;
      configureBuckets?: { name: string }[];
    });
    run(): Promise<{ address: string; port: number }>;
    close(): Promise<void>;
  }
}

declare module "bun:test" {
  interface Matchers<T> {
    /** A CLI result ({ code, stdout, stderr }) that exited 0; the failure message shows its output. */
    toSucceed(): void;
  }
}
