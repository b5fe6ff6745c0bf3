import type { Transporter } from "nodemailer";
import type { MailConfig } from "../config/index.ts";
import type { Log } from "../log.ts";
import type { Mail } from "./templates.ts";

/** Hands one message to whatever carries it; throws when it could not. */
export type Transport = { send(mail: Mail): Promise<void>; close(): void };

/**
 * SMTP through nodemailer: smtps:// is TLS from the first byte, smtp:// upgrades with STARTTLS when
 * offered. nodemailer loads with the first message: it is a large module, and a process that never
 * sends mail (every CLI command) should not pay for its top level.
 */
export function smtpTransport(config: MailConfig): Transport {
  let transporter: Promise<Transporter> | undefined;
  const open = async () => {
    const { default: nodemailer } = await import("nodemailer");
    return nodemailer.createTransport({
      url: config.smtpUrl!,
      // Bounded, so a server that accepts the connection and then stalls cannot hold a message forever.
      connectionTimeout: 10_000,
      greetingTimeout: 10_000,
      socketTimeout: 30_000,
    } as Parameters<typeof nodemailer.createTransport>[0]);
  };
  return {
    async send(mail) {
      const opening = (transporter ??= open());
      // A failure to open is not kept: the next message tries again.
      opening.catch(() => {
        if (transporter === opening) transporter = undefined;
      });
      await (await opening).sendMail({ from: config.from, ...mail });
    },
    close: () =>
      void transporter?.then(
        (t) => t.close(),
        () => {},
      ),
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
