import * as v from "valibot";
import { bool, duration, int, optionalHttpUrl, optionalUrl, type Values } from "./values.ts";

/** Account recovery by mail: the SMTP transport, and how long mailed codes live. */
export const entries = {
  SMTP_URL: optionalUrl(
    ["smtp:", "smtps:"],
    "must be a URL such as smtps://user:password@smtp.example.com:465 or smtp://host:587",
  ),
  MAIL_FROM: v.pipe(
    v.optional(v.string(), "shinkei <no-reply@localhost>"),
    v.trim(),
    v.check(
      (s) => /^(?:[^<>\r\n]*<[^\s<>@]+@[^\s<>@]+>|[^\s<>@]+@[^\s<>@]+)$/.test(s),
      "must be an address such as no-reply@example.com or Name <no-reply@example.com>",
    ),
  ),
  MAIL_RETRY_BASE: duration("2s", "1h"),
  MAIL_MAX_ATTEMPTS: int(8, 1, 100),
  PUBLIC_URL: optionalHttpUrl(),
  PASSWORD_RESET_TTL: duration("1h", "7d"),
  EMAIL_VERIFICATION_TTL: duration("24h", "30d"),
  REQUIRE_EMAIL_VERIFICATION: bool(false),
};

export type MailConfig = {
  /** "smtp" sends; "log" (development without SMTP_URL) writes each message to the log; "off" refuses. */
  mode: "smtp" | "log" | "off";
  smtpUrl?: string;
  from: string;
  retryBaseMs: number;
  maxAttempts: number;
  /** Where people reach this server; mails name routes under it. */
  publicUrl: string;
};

export function read(r: Values<typeof entries>, environment: string, port: number) {
  const mail: MailConfig = {
    mode: r.SMTP_URL ? "smtp" : environment === "development" ? "log" : "off",
    smtpUrl: r.SMTP_URL,
    from: r.MAIL_FROM,
    retryBaseMs: r.MAIL_RETRY_BASE,
    maxAttempts: r.MAIL_MAX_ATTEMPTS,
    publicUrl: (r.PUBLIC_URL ?? `http://localhost:${port || 8000}`).replace(/\/+$/, ""),
  };
  return {
    mail,
    recovery: {
      passwordResetTtlMs: r.PASSWORD_RESET_TTL,
      verificationTtlMs: r.EMAIL_VERIFICATION_TTL,
      requireEmailVerification: r.REQUIRE_EMAIL_VERIFICATION,
    },
  };
}
