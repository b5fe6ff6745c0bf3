import { binaryPath, buildBinary } from "./cli.ts";

/** A long-running shinkei command whose JSON log lines are collected as they arrive. */
export class Service {
  readonly lines: Record<string, unknown>[] = [];
  private constructor(readonly proc: Bun.Subprocess<"ignore", "pipe", "pipe">) {}

  static async start(args: string[], env: Record<string, string>): Promise<Service> {
    await buildBinary();
    const proc = Bun.spawn([binaryPath, ...args], { env: { PATH: process.env.PATH!, ...env }, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
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
  }

  async waitFor(predicate: (l: Record<string, unknown>) => boolean, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(predicate);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`timed out; log so far:\n${this.lines.map((l) => JSON.stringify(l)).join("\n")}\n${await new Response(this.proc.stderr).text()}`);
      await Bun.sleep(50);
    }
  }

  async stop(): Promise<number> {
    this.proc.kill("SIGTERM");
    return this.proc.exited;
  }
}
