import { expect, test } from "bun:test";
import { shinkei } from "./support/cli.ts";
import { commandTable, loadCommand, loadCommands } from "../cli/run.ts";
import { commandHelp, formName, parseForm, selectForm, subcommandHelp } from "../cli/parse.ts";
import type { Command, Subcommand } from "../cli/command.ts";
import { ShinkeiError } from "../src/errors.ts";

const commands = await loadCommands();
const forms = commands.flatMap((command) => command.subcommands.map((sub) => ({ command, sub })));
const helpOf = (command: Command, sub: Subcommand) =>
  command.subcommands.length === 1 ? commandHelp(command) : subcommandHelp(command, sub);

/** The options a form's help lists, read back from the help text itself. */
function optionsInHelp(help: string): { name: string; value: boolean }[] {
  const block = help.slice(help.indexOf("\nOptions:\n"));
  return [...block.matchAll(/^ {2}(?:-\w, )?--([a-z-]+)( \S+)?\s{2,}/gm)]
    .map((m) => ({ name: m[1]!, value: m[2] !== undefined }))
    .filter((o) => o.name !== "help");
}

/** The words that select a form: its word, else its selecting option, else nothing (the default). */
function selecting(sub: Subcommand): string[] {
  if (sub.word) return [sub.word];
  if (sub.flag) return sub.options[sub.flag]!.type === "string" ? [`--${sub.flag}`, "x"] : [`--${sub.flag}`];
  return [];
}

function parse(command: Command, args: string[]) {
  const selected = selectForm(command, args);
  if ("help" in selected) throw new Error("help was shown");
  return { sub: selected.sub, ...parseForm(command, selected.sub, args) };
}

test("each command loads under the name it answers to: what --help lists is what runs", async () => {
  expect(commands.map((c) => c.name)).toEqual(commandTable.map((c) => c.name));
  expect(new Set(commands.map((c) => c.name)).size).toBe(commands.length);
  for (const { name } of commandTable) expect((await loadCommand(name))?.name).toBe(name);
  expect(await loadCommand("constructor")).toBeUndefined();
});

test("every form lists exactly the options it declares, and accepts every option its help lists", () => {
  expect(forms.length).toBeGreaterThan(20);
  for (const { command, sub } of forms) {
    const listed = optionsInHelp(helpOf(command, sub));
    expect(listed.map((o) => o.name).sort()).toEqual(Object.keys(sub.options).sort());
    for (const option of listed) {
      expect(option.value).toBe(sub.options[option.name]!.type === "string");
      const given = option.value ? [`--${option.name}`, "x"] : [`--${option.name}`];
      const args = option.name === sub.flag ? given : [...selecting(sub), ...given];
      const parsed = parse(command, args);
      expect(parsed.sub).toBe(sub);
      expect(parsed.values[option.name]).toBe(option.value ? "x" : true);
    }
  }
});

test("every form refuses each option only other forms take, naming the option and the form (USAGE)", () => {
  const everyOption = new Map(forms.flatMap(({ sub }) => Object.entries(sub.options)));
  let refusals = 0;
  for (const { command, sub } of forms) {
    for (const [name, spec] of everyOption) {
      if (name in sub.options) continue;
      const args = [...selecting(sub), `--${name}`, ...(spec.type === "string" ? ["x"] : [])];
      let error: unknown;
      try {
        parse(command, args);
      } catch (e) {
        error = e;
      }
      // An option that selects another form of the same command picks that form (or asks to
      // choose): no silent run either way.
      const selects = command.subcommands.some((s) => s !== sub && s.flag === name);
      if (selects && !sub.word && !sub.flag) continue;
      expect(error, `${formName(command, sub)} --${name}`).toBeInstanceOf(ShinkeiError);
      const e = error as ShinkeiError;
      expect(e.code).toBe("USAGE");
      expect(e.exitCode).toBe(2);
      expect(e.message).toContain(`--${name}`);
      expect(e.message).toContain(sub.flag && !sub.word ? `--${sub.flag}` : formName(command, sub));
      refusals++;
    }
  }
  expect(refusals).toBeGreaterThan(300);
});

test("the binary: an option the subcommand does not take is exit 2, naming both, with that one's usage", async () => {
  const cases: [string[], string][] = [
    [
      ["backup", "list", "--output", "x"],
      "✖ Unknown option '--output' for backup list: --output goes with backup keygen",
    ],
    [["backup", "--list", "--all"], "✖ Unknown option '--all' for backup list: --all goes with backup verify"],
    [["backup", "--nope"], "✖ Unknown option '--nope' for backup\n"],
    [["migrate", "status", "--force"], "✖ Unknown option '--force' for migrate status: --force goes with migrate down"],
    [["pitr", "status", "--to", "latest"], "✖ Unknown option '--to' for pitr status: --to goes with pitr restore"],
    [
      ["recover", "--history", "--dry-run"],
      "✖ Unknown option '--dry-run' for recover --history: --history and --dry-run do not go together",
    ],
    [["backup", "keygen", "extra"], '✖ unknown argument "extra" for backup keygen'],
  ];
  for (const [args, message] of cases) {
    const r = await shinkei(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith(message);
    expect(r.stderr).toContain(`Usage: shinkei ${args[0]}`);
    expect(r.stdout).toBe("");
  }
  // Nothing ran: the key file keygen would have written is not there.
  expect(await Bun.file("shinkei-backup.key").exists()).toBe(false);
});

test("the binary: every form answers its own --help, starting with its own usage line", async () => {
  for (const { command, sub } of forms) {
    const r = await shinkei(
      [...selecting(sub), "--help"].length ? [command.name, ...selecting(sub), "--help"] : [command.name, "--help"],
    );
    expect(r).toSucceed();
    const form = sub.word ? `${command.name} ${sub.word}` : sub.flag ? `${command.name} --${sub.flag}` : command.name;
    expect(r.stdout).toStartWith(`Usage: shinkei ${form}`);
    for (const name of Object.keys(sub.options)) expect(r.stdout).toContain(`--${name}`);
  }
});
