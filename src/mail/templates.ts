// Imported as text so `bun build --compile` embeds them: the binary needs no files beside it.
import resetText from "./templates/password-reset.txt.tmpl" with { type: "text" };
import resetHtml from "./templates/password-reset.html.tmpl" with { type: "text" };
import changedText from "./templates/password-changed.txt.tmpl" with { type: "text" };
import changedHtml from "./templates/password-changed.html.tmpl" with { type: "text" };
import verifyText from "./templates/verify-email.txt.tmpl" with { type: "text" };
import verifyHtml from "./templates/verify-email.html.tmpl" with { type: "text" };
import duplicateText from "./templates/duplicate-registration.txt.tmpl" with { type: "text" };
import duplicateHtml from "./templates/duplicate-registration.html.tmpl" with { type: "text" };

export type Mail = { to: string; subject: string; text: string; html: string };

const templates = {
  "password-reset": { subject: "Your shinkei password reset code", text: resetText, html: resetHtml },
  "password-changed": { subject: "Your shinkei password was changed", text: changedText, html: changedHtml },
  "verify-email": { subject: "Confirm your email address for shinkei", text: verifyText, html: verifyHtml },
  "duplicate-registration": {
    subject: "Someone tried to create a shinkei account with your address",
    text: duplicateText,
    html: duplicateHtml,
  },
} as const;

export type TemplateName = keyof typeof templates;

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]!);

/**
 * Fill `{{name}}` placeholders. Values are escaped in the HTML body (a user's name is theirs to
 * choose, and must not become markup); a placeholder without a value is a bug, so it throws.
 */
function fill(template: string, vars: Record<string, string>, escapeValue: (s: string) => string): string {
  return template.replace(/\{\{(\w+)\}\}/g, (_, key: string) => {
    const value = vars[key];
    if (value === undefined) throw new Error(`mail template needs {{${key}}}`);
    return escapeValue(value);
  });
}

export function renderMail(name: TemplateName, to: string, vars: Record<string, string>): Mail {
  const t = templates[name];
  return { to, subject: t.subject, text: fill(t.text, vars, (s) => s), html: fill(t.html, vars, escapeHtml) };
}
