import type { MailConfig } from "../config/index.ts";
import type { Log } from "../log.ts";
import type { Sql } from "../pg/db.ts";
import { MailQueue } from "./queue.ts";
import { logTransport, smtpTransport } from "./transport.ts";

export { MailQueue } from "./queue.ts";
export { renderMail, type Mail, type TemplateName } from "./templates.ts";

/** The outbox `config` asks for, or undefined when mail is off; says at start which it is. */
export function createMailQueue(config: MailConfig, sql: Sql, log: Log): MailQueue | undefined {
  const options = { retryBaseMs: config.retryBaseMs, maxAttempts: config.maxAttempts };
  if (config.mode === "smtp") {
    const u = new URL(config.smtpUrl!);
    // The host only: the URL may carry a password.
    log({
      level: "info",
      msg: "mail on",
      via: `${u.protocol}//${u.hostname}:${u.port || (u.protocol === "smtps:" ? 465 : 587)}`,
      from: config.from,
    });
    return new MailQueue(sql, smtpTransport(config), log, options);
  }
  if (config.mode === "log") {
    log({ level: "warn", msg: "mail goes to the log: SMTP_URL is not set (development)" });
    return new MailQueue(sql, logTransport(log), log, options);
  }
  log({
    level: "warn",
    msg: "mail is off: SMTP_URL is not set, so password reset and email verification answer 503 MAIL_DISABLED",
    hint: "Set SMTP_URL (and MAIL_FROM) to turn it on.",
  });
  return undefined;
}
