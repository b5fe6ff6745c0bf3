import * as v from "valibot";
import { optionalInt, optionalText, type Values } from "./values.ts";

/** A shared secret sent as a Bearer token: long enough that guessing it is not a plan. */
const secretToken = () =>
  v.pipe(
    optionalText(),
    v.check(
      (s) => s === undefined || (s.length >= 16 && /^[\x21-\x7e]+$/.test(s)),
      "must be at least 16 printable characters without spaces (e.g. openssl rand -hex 32)",
    ),
  );

/** The ops listener (metrics and the status page) and the tokens that guard them. */
export const entries = {
  METRICS_PORT: optionalInt(1, 65535),
  METRICS_HOST: v.pipe(
    v.optional(v.string(), "127.0.0.1"),
    v.trim(),
    v.nonEmpty("must be an address to listen on, such as 127.0.0.1"),
  ),
  METRICS_TOKEN: secretToken(),
  OPS_TOKEN: secretToken(),
};

export type OpsConfig = {
  /** Off when undefined: nothing listens unless METRICS_PORT is set. */
  port?: number;
  host: string;
  /** Bearer token for /metrics; on the public port of serve, /metrics exists only when it is set. */
  metricsToken?: string;
  /** Bearer (or Basic password) for the status page; on the public port it exists only when it is set. */
  opsToken?: string;
};

export function read(r: Values<typeof entries>): { ops?: OpsConfig } {
  return { ops: { port: r.METRICS_PORT, host: r.METRICS_HOST, metricsToken: r.METRICS_TOKEN, opsToken: r.OPS_TOKEN } };
}
