import { binaryPath, buildBinary } from "./cli.ts";

const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * The compiled binary in a real pseudo-terminal (tmux), typed at like a person would. Each
 * instance has its own tmux server, so tests never meet each other's sessions.
 */
export class Terminal {
  private constructor(private readonly socket: string) {}

  static async start(args: string[], env: Record<string, string>): Promise<Terminal> {
    await buildBinary();
    const socket = `shinkei-test-${crypto.randomUUID().slice(0, 8)}`;
    const vars = Object.entries(env)
      .map(([k, v]) => `${k}=${quote(v)}`)
      .join(" ");
    // CI=true would make the binary treat the terminal as unattended; a person's terminal has no CI.
    const command = `env -u CI ${vars} ${quote(binaryPath)} ${args.map(quote).join(" ")}; echo "__EXIT=$?"; sleep 600`;
    const p = Bun.spawn(["tmux", "-L", socket, "new-session", "-d", "-x", "160", "-y", "60", command]);
    if ((await p.exited) !== 0) throw new Error("tmux could not start");
    return new Terminal(socket);
  }

  /** What the terminal shows; `joined`: a line the terminal wrapped at its width comes back whole. */
  async screen(joined = false): Promise<string> {
    const args = ["capture-pane", "-p", "-S", "-500", ...(joined ? ["-J"] : [])];
    const p = Bun.spawn(["tmux", "-L", this.socket, ...args], { stdout: "pipe" });
    return new Response(p.stdout).text();
  }

  async waitFor(pattern: string | RegExp, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.screen();
      if (typeof pattern === "string" ? s.includes(pattern) : pattern.test(s)) return s;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}; screen:\n${s}`);
      await Bun.sleep(50);
    }
  }

  private async keys(...keys: string[]) {
    await Bun.spawn(["tmux", "-L", this.socket, "send-keys", ...keys]).exited;
  }

  async type(text: string) {
    await this.keys("-l", text);
  }

  async enter() {
    await this.keys("Enter");
  }

  async ctrlC() {
    await this.keys("C-c");
  }

  async exitCode(): Promise<number> {
    const s = await this.waitFor(/__EXIT=\d+/);
    return Number(/__EXIT=(\d+)/.exec(s)![1]);
  }

  async close() {
    await Bun.spawn(["tmux", "-L", this.socket, "kill-server"], { stderr: "ignore" }).exited;
  }
}
