import { parseArgs } from "node:util";
import type { Command, Options, OptionSpec, Subcommand, Values } from "./command.ts";
import { ShinkeiError } from "../src/errors.ts";

const helpOption: OptionSpec = { type: "boolean", short: "h", description: "show this help" };

/** How a form is written: `backup list`, `backup --list`, `status --watch`, `backup` for the default. */
export function formName(command: Command, sub: Subcommand): string {
  return sub.word ? `${command.name} ${sub.word}` : sub.flag ? `${command.name} --${sub.flag}` : command.name;
}

function optionLabel(name: string, spec: OptionSpec): string {
  return `${spec.short ? `-${spec.short}, ` : ""}--${name}${spec.value ? ` ${spec.value}` : ""}`;
}

/** The usage line of one form: its options inline when they are few, else [options]. */
function usageLine(command: Command, sub: Subcommand): string {
  const parts = [`shinkei ${command.name}`];
  if (sub.word) parts.push(sub.word);
  else if (sub.flag) parts.push(optionLabel(sub.flag, sub.options[sub.flag]!).replace(/^-\w, /, ""));
  if (sub.args) parts.push(sub.args.usage);
  const groups = new Map<string, string[]>();
  for (const [name, spec] of Object.entries(sub.options)) {
    if (spec.oneOf)
      groups.set(spec.oneOf, [...(groups.get(spec.oneOf) ?? []), optionLabel(name, spec).replace(/^-\w, /, "")]);
  }
  for (const labels of groups.values()) parts.push(`(${labels.join(" | ")})`);
  const rest = Object.entries(sub.options).filter(([name, spec]) => name !== sub.flag && !spec.oneOf);
  if (rest.length > 0 && rest.length <= 3)
    parts.push(...rest.map(([name, spec]) => `[${optionLabel(name, spec).replace(/^-\w, /, "")}]`));
  else if (rest.length) parts.push("[options]");
  return parts.join(" ");
}

function optionLines(options: Options): string[] {
  const entries = Object.entries({ ...options, help: helpOption });
  const width = Math.max(...entries.map(([name, spec]) => optionLabel(name, spec).length));
  return entries.map(([name, spec]) => {
    const label = optionLabel(name, spec);
    const text = spec.description.split("\n").join(`\n${" ".repeat(width + 6)}`);
    return `  ${label.padEnd(width)}    ${text}`;
  });
}

function usageBlock(command: Command, subs: Subcommand[]): string {
  return subs.map((s, i) => `${i === 0 ? "Usage: " : "       "}${usageLine(command, s)}`).join("\n");
}

/** `shinkei CMD SUB --help`: generated from the form's summary, description and option definitions. */
export function subcommandHelp(command: Command, sub: Subcommand): string {
  const blocks = [usageBlock(command, [sub]), sub.summary];
  if (sub.description) blocks.push(sub.description);
  blocks.push(`Options:\n${optionLines(sub.options).join("\n")}`);
  return blocks.join("\n\n");
}

/** `shinkei CMD --help`: every form's usage, then each form with its summary and options. */
export function commandHelp(command: Command): string {
  if (command.subcommands.length === 1) {
    const [only] = command.subcommands;
    const blocks = [usageBlock(command, [only!]), only!.summary];
    if (command.description) blocks.push(command.description);
    if (only!.description) blocks.push(only!.description);
    blocks.push(`Options:\n${optionLines(only!.options).join("\n")}`);
    return blocks.join("\n\n");
  }
  const blocks = [usageBlock(command, command.subcommands)];
  if (command.description) blocks.push(command.description);
  for (const sub of command.subcommands) {
    const also = sub.word && sub.flag ? ` (or shinkei ${command.name} --${sub.flag})` : "";
    const usage = sub.args ? ` ${sub.args.usage}` : "";
    const lines = [`shinkei ${formName(command, sub)}${usage}${also}: ${sub.summary.replace(/\n/g, "\n  ")}`];
    if (sub.description) lines.push(sub.description.replace(/^/gm, "  "));
    lines.push(...optionLines(sub.options).slice(0, -1));
    blocks.push(lines.join("\n"));
  }
  const example = command.subcommands.find((s) => s.word)?.word;
  blocks.push(
    `  -h, --help   show this ` +
      `help${example ? `; after a form, that form's alone (shinkei ${command.name} ${example} --help)` : ""}`,
  );
  return blocks.join("\n\n");
}

/** Every option any form of the command takes: enough to find the form before parsing strictly. */
function allOptions(command: Command): Options {
  const all: Options = {};
  for (const sub of command.subcommands) {
    for (const [name, spec] of Object.entries(sub.options)) {
      const seen = all[name];
      if (seen && (seen.type !== spec.type || seen.short !== spec.short))
        throw new Error(`${command.name}: --${name} is declared differently by two forms`);
      all[name] = spec;
    }
  }
  return all;
}

/** Why an option the form does not take is refused, naming the option, the form, and where it belongs. */
function unknownOption(command: Command, sub: Subcommand, raw: string, name: string): ShinkeiError {
  const form = formName(command, sub);
  const others = command.subcommands.filter((s) => s !== sub && name in s.options);
  let why = "";
  if (others.length && sub.flag && !sub.word) why = `: --${sub.flag} and ${raw} do not go together`;
  else if (others.length) {
    const forms = others.map((s) =>
      s.flag && !s.word ? `--${s.flag}` : s.word ? `${command.name} ${s.word}` : command.name,
    );
    why = `: ${raw} goes with ${forms.join(" or ")}`;
  }
  return new ShinkeiError("USAGE", `Unknown option '${raw}' for ${form}${why}`);
}

/** Find the form: by its word, else by its selecting option, else the command's default. */
export function selectForm(command: Command, args: string[]): { sub: Subcommand } | { help: string } {
  const loose = looseParse(command, args);
  const word = loose.positionals[0];
  const chosen = command.subcommands.filter((s) => s.flag && loose.values[s.flag] !== undefined);
  const byFlags = () => {
    if (chosen.length > 1)
      throw new ShinkeiError("USAGE", `choose one of ${chosen.map((s) => `--${s.flag}`).join(", ")}`);
    return chosen[0] ?? command.subcommands.find((s) => s.default);
  };
  if (word !== undefined) {
    const sub = command.subcommands.find((s) => s.word === word);
    if (sub) return { sub };
    // `serve --watch x`: the option no form takes is the mistake, not the "x" it was meant to carry.
    const all = allOptions(command);
    const stray = loose.tokens?.find((t) => t.kind === "option" && t.name !== "help" && !(t.name in all));
    if (stray?.kind === "option") {
      const form = byFlags();
      throw form
        ? unknownOption(command, form, stray.rawName, stray.name)
        : new ShinkeiError("USAGE", `Unknown option '${stray.rawName}' for ${command.name}`);
    }
    throw new ShinkeiError("USAGE", `unknown argument "${word}" for ${command.name}`);
  }
  if (!chosen.length && loose.values.help) return { help: commandHelp(command) };
  const sub = byFlags();
  if (!sub)
    throw new ShinkeiError(
      "USAGE",
      `${command.name} needs one of: ${command.subcommands.map((s) => s.word).join(", ")}`,
    );
  return { sub };
}

function looseParse(command: Command, args: string[]) {
  return parseArgs({
    args,
    options: { ...allOptions(command), help: helpOption },
    allowPositionals: true,
    strict: false,
    tokens: true,
  });
}

/** Parse strictly with the form's own options: one it does not take is a usage error naming both. */
export function parseForm(
  command: Command,
  sub: Subcommand,
  args: string[],
): { values: Values; positionals: string[]; help: boolean } {
  const loose = looseParse(command, args);
  const refused: { raw: string; name: string }[] = [];
  for (const t of loose.tokens ?? []) {
    if (t.kind === "option" && t.name !== "help" && !(t.name in sub.options) && !refused.some((r) => r.name === t.name))
      refused.push({ raw: t.rawName, name: t.name });
  }
  if (loose.values.help) return { values: {}, positionals: [], help: true };
  if (refused.length)
    throw sub.refuse?.(refused.map((r) => r.name)) ?? unknownOption(command, sub, refused[0]!.raw, refused[0]!.name);

  const strict = parseArgs({
    args,
    options: { ...sub.options, help: helpOption },
    allowPositionals: true,
    strict: true,
  });
  const positionals = strict.positionals;
  const extra = positionals[(sub.word !== undefined && positionals[0] === sub.word ? 1 : 0) + (sub.args?.max ?? 0)];
  if (extra !== undefined) throw new ShinkeiError("USAGE", `unknown argument "${extra}" for ${formName(command, sub)}`);
  return { values: strict.values as Values, positionals, help: false };
}
