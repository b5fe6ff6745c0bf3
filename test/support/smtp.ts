import { SMTPServer } from "smtp-server";
import { simpleParser, type ParsedMail } from "mailparser";
import type { AddressInfo } from "node:net";

export type Received = { to: string; from: string; subject: string; text: string; html: string; raw: ParsedMail };

/**
 * A real SMTP server on loopback (smtp-server) that demands the credentials of its URL and parses
 * every message with mailparser. `stop()` and `start()` take it down and back on the same port,
 * for outage tests.
 */
export class TestSmtp {
  readonly received: Received[] = [];
  private server?: SMTPServer;
  port = 0;

  static async start(): Promise<TestSmtp> {
    const s = new TestSmtp();
    await s.start();
    return s;
  }

  async start() {
    const server = new SMTPServer({
      disabledCommands: ["STARTTLS"],
      authMethods: ["PLAIN", "LOGIN"],
      closeTimeout: 100,
      logger: false,
      onAuth(auth, _session, cb) {
        if (auth.username === "shinkei" && auth.password === "s3cret") cb(null, { user: auth.username });
        else cb(new Error("bad credentials"));
      },
      onData: (stream, _session, cb) => {
        simpleParser(stream).then((m) => {
          const address = (a: ParsedMail["to"]) =>
            Array.isArray(a) ? a.map((x) => x.text).join(", ") : (a?.text ?? "");
          this.received.push({
            to: address(m.to),
            from: m.from?.text ?? "",
            subject: m.subject ?? "",
            text: m.text ?? "",
            html: typeof m.html === "string" ? m.html : "",
            raw: m,
          });
          cb();
        }, cb);
      },
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (server.server.address() as AddressInfo).port;
    this.server = server;
  }

  async stop() {
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  get url() {
    return `smtp://shinkei:s3cret@127.0.0.1:${this.port}`;
  }

  to(address: string): Received[] {
    return this.received.filter((m) => m.to.toLowerCase().includes(address.toLowerCase()));
  }

  async waitFor(address: string, subject: RegExp, count = 1, timeoutMs = 20_000): Promise<Received> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.to(address).filter((m) => subject.test(m.subject));
      if (found.length >= count) return found[count - 1]!;
      if (Date.now() > deadline)
        throw new Error(
          `no mail "${subject}" to ${address}; ` +
            `received: ${this.received.map((m) => `${m.to}: ${m.subject}`).join("; ")}`,
        );
      await Bun.sleep(20);
    }
  }
}

/** The code a shinkei mail carries (the indented line of 32 base64url characters). */
export function codeIn(mail: Received): string {
  const m = /^ {4}([A-Za-z0-9_-]{32})$/m.exec(mail.text);
  if (!m) throw new Error(`no code in mail: ${mail.text}`);
  return m[1]!;
}
