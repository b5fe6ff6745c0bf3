import * as v from "valibot";
import { ShinkeiError } from "../errors.ts";

/**
 * Text PostgreSQL can store: a UTF8 database refuses the NUL character (and a lone surrogate has no
 * UTF-8 form; it would be stored as U+FFFD, not as sent). Checked first, so such input is a 400
 * naming the field before anything is hashed or sent to the database.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is exactly what this refuses.
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const text = () =>
  v.pipe(
    v.string("must be a string"),
    v.check((s: string) => !UNSTORABLE.test(s), "must not contain NUL characters or unpaired surrogates"),
  );

const email = v.pipe(
  text(),
  v.trim(),
  v.nonEmpty("is required"),
  v.maxLength(254, "must be at most 254 characters"),
  v.email("must be a valid email address"),
);
const newPassword = v.pipe(
  text(),
  v.minLength(8, "must be at least 8 characters"),
  v.maxLength(256, "must be at most 256 characters"),
);
// At login we only bound the size: a policy hint there would help guessers, not users.
const anyPassword = v.pipe(text(), v.nonEmpty("is required"), v.maxLength(256, "must be at most 256 characters"));
/**
 * Control characters (line breaks and tabs among them), the line and paragraph separators and the
 * bidi embeddings, overrides, isolates and marks: mails greet the person by name, and a registration may
 * name any address, so a name that held these would write lines of someone else's text (or text
 * that reads backwards) into a mail we send.
 */
const NOT_ONE_LINE = /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]/u;
const name = v.pipe(
  text(),
  v.trim(),
  v.nonEmpty("is required"),
  v.maxLength(200, "must be at most 200 characters"),
  v.check((s: string) => !NOT_ONE_LINE.test(s), "must be one line of text, without control characters"),
);

const input = <T extends v.ObjectEntries>(entries: T) => v.strictObject(entries, "is not an accepted field");

export const RegisterInput = input({ email, password: newPassword, name });
export const LoginInput = input({ email, password: anyPassword });
export const PasswordChangeInput = input({ currentPassword: anyPassword, newPassword });
// A code's form is checked where it is looked up, so a malformed one counts as a wrong guess.
const code = v.pipe(text(), v.trim(), v.nonEmpty("is required"), v.maxLength(128, "must be at most 128 characters"));
export const EmailInput = input({ email });
export const ResetConfirmInput = input({ email, code, newPassword });
export const VerifyEmailInput = input({ email, code });

/** Validate `body` against `schema`; every failing field is listed in one INVALID_INPUT error. */
export function parseInput<S extends v.GenericSchema>(schema: S, body: unknown): v.InferOutput<S> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ShinkeiError("INVALID_INPUT", "the body must be a JSON object");
  }
  const result = v.safeParse(schema, body, { abortPipeEarly: true });
  if (result.success) return result.output;
  const fields: Record<string, string> = {};
  for (const issue of result.issues) {
    const key = issue.path?.map((p) => String(p.key)).join(".") ?? "body";
    fields[key] ??= issue.kind === "schema" && issue.received === "undefined" ? "is required" : issue.message;
  }
  const list = Object.entries(fields)
    .map(([k, m]) => `${k} ${m}`)
    .join("; ");
  throw new ShinkeiError("INVALID_INPUT", `invalid input: ${list}`, { details: { fields } });
}
