import nodemailer from "nodemailer";
import type { MailConfig } from "../config/index.ts";
import type { Log } from "../log.ts";
import type { Mail } from "./templates.ts";

/** Hands one message to whatever carries it; throws when it could not. */
export type Transport = { send(mail: Mail): Promise<void>; close(): void };

/** SMTP through nodemailer: smtps:// is TLS from the first byte, smtp:// upgrades with STARTTLS when offered. */
export function smtpTransport(config: MailConfig): Transport {
  const transporter = nodemailer.createTransport({
    url: config.smtpUrl!,
    // Bounded, so a server that accepts the connection and then stalls cannot hold a message forever.
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 30_000,
  } as Parameters<typeof nodemailer.createTransport>[0]);
  return {
    async send(mail) {
      await transporter.sendMail({ from: config.from, ...mail });
    },
    close: () => transporter.close(),
  };
}

/**
 * Development without SMTP_URL: the message goes to the log, so a fresh checkout can walk through
 * a reset end to end. Never used elsewhere: the codes in these messages are secrets.
 */
export function logTransport(log: Log): Transport {
  return {
    async send(mail) {
      log({
        level: "info",
        msg: "mail (SMTP_URL unset, development: logged, not sent)",
        to: mail.to,
        subject: mail.subject,
        text: mail.text,
      });
    },
    close() {},
  };
}
