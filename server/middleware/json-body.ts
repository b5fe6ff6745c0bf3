import type { MiddlewareHandler } from "hono";
import { ShinkeiError } from "../../src/errors.ts";
import type { AppEnv } from "../env.ts";

export const BODY_LIMIT = 16 * 1024;

async function readLimited(request: Request, limit: number): Promise<string> {
  const declared = Number(request.headers.get("content-length"));
  const tooLarge = () => new ShinkeiError("PAYLOAD_TOO_LARGE", `the body must be at most ${limit / 1024} KiB`);
  if (declared > limit) throw tooLarge();
  if (!request.body) return "";
  // Count as we read: a chunked body has no length to check up front.
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of request.body) {
    size += chunk.byteLength;
    if (size > limit) throw tooLarge();
    chunks.push(chunk);
  }
  return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
}

/**
 * Require `application/json` (otherwise a wrong content type would read as an empty body),
 * bound the size, and parse. The parsed value is `c.get("body")`.
 */
export const jsonBody = (): MiddlewareHandler<AppEnv> => async (c, next) => {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type)) {
    throw new ShinkeiError("UNSUPPORTED_MEDIA_TYPE", "the body must be sent as application/json");
  }
  let text: string;
  try {
    text = await readLimited(c.req.raw, BODY_LIMIT);
  } catch (e) {
    if (e instanceof ShinkeiError) throw e;
    throw new ShinkeiError("BAD_JSON", "the body is not valid UTF-8");
  }
  try {
    c.set("body", JSON.parse(text));
  } catch {
    throw new ShinkeiError("BAD_JSON", "the body is not valid JSON");
  }
  await next();
};
