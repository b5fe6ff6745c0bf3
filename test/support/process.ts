import { tmpdir } from "node:os";
import { binaryPath, buildBinary, type RunOptions } from "./cli.ts";

/**
 * A shinkei command left running (a server, a service, a backup to interrupt), its JSON log lines
 * collected as they arrive. `prefix` runs it through another command (`ip netns exec <ns>`).
 */
export class Service {
  readonly lines: Record<string, unknown>[] = [];
  /** stdout has ended: no line that is not here yet will come. */
  private ended = false;
  private constructor(readonly proc: Bun.Subprocess<"ignore", "pipe", "pipe">) {}

  static async start(
    args: string[],
    env: Record<string, string>,
    options: RunOptions & { prefix?: string[] } = {},
  ): Promise<Service> {
    await buildBinary();
    const command = [...(options.prefix ?? []), options.binary ?? binaryPath, ...args];
    const proc = Bun.spawn(command, {
      cwd: options.cwd,
      // TMPDIR: the run's (see the preload), unless `env` names its own.
      env: { PATH: process.env.PATH!, TMPDIR: tmpdir(), ...env },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const s = new Service(proc);
    s.read();
    return s;
  }

  private async read() {
    let buffer = "";
    for await (const chunk of this.proc.stdout) {
      buffer += new TextDecoder().decode(chunk);
      const parts = buffer.split("\n");
      buffer = parts.pop()!;
      for (const p of parts) {
        try {
          this.lines.push(JSON.parse(p));
        } catch {
          this.lines.push({ text: p });
        }
      }
    }
    this.ended = true;
  }

  async waitFor(
    predicate: (l: Record<string, unknown>) => boolean,
    timeoutMs = 15_000,
  ): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(predicate);
      if (found) return found;
      if (this.ended || Date.now() > deadline)
        throw new Error(
          `${this.ended ? "it exited" : "timed out"}; log so far:\n` +
            `${this.lines.map((l) => JSON.stringify(l)).join("\n")}\n${await new Response(this.proc.stderr).text()}`,
        );
      await Bun.sleep(50);
    }
  }

  /** The URL of a server once its "listening" line is out. */
  async listening(): Promise<string> {
    return (await this.waitFor((l) => l.msg === "listening")).url as string;
  }

  /** Everything it wrote to stderr, once it has exited. */
  async stderr(): Promise<string> {
    return new Response(this.proc.stderr).text();
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number> {
    this.proc.kill(signal);
    return this.proc.exited;
  }
}
