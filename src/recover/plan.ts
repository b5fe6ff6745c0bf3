import type { Queryable, Sql } from "../pg/db.ts";
import { connect } from "../pg/db.ts";
import { ShinkeiError } from "../errors.ts";
import { quoteIdent, quoteLiteral } from "../pg/tables.ts";
import { diffScope, readScope, type Row, type Rows, type TableDiff } from "./diff.ts";
import { ownershipGraph, type Graph } from "./graph.ts";

export type Scope =
  | { kind: "user"; email: string }
  | { kind: "user-id"; id: string }
  | { kind: "world"; id: string }
  | { kind: "story"; id: string };

/** The incident: the email now belongs to another, newer account. How to bring the data back. */
export type AccountMode = "into-current-account" | "restore-account";

export type Account = { id: string; email: string; name: string; createdAt: string; rows: Record<string, number> };

export type Plan = {
  scope: Scope;
  graph: Graph;
  /** The root row's id in the backup, and the one whose rows count as "now" in the live database. */
  sourceRoot: string;
  currentRoot: string;
  /** The email of the account the data belongs to (the owner, for a world or a story). */
  owner?: string;
  /** What the operator types to confirm. */
  confirmation: string;
  /** Set when the email now belongs to a different account than in the backup. */
  replaced?: { old: Account; current: Account };
  mode?: AccountMode;
  /** With --restore-account: the new, empty account removed in the same transaction. */
  removeAccount?: string;
  source: Rows;
  tables: TableDiff[];
  notes: string[];
};

const rootTable: Record<Scope["kind"], string> = {
  user: "users",
  "user-id": "users",
  world: "worlds",
  story: "stories",
};
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function checkScope(scope: Scope): void {
  if (scope.kind === "user") {
    if (!scope.email.includes("@") || scope.email.length > 254)
      throw new ShinkeiError("USAGE", `--user needs an email address, not "${scope.email}"`);
  } else if (!UUID.test(scope.id)) {
    throw new ShinkeiError("USAGE", `--${scope.kind} needs an id (a UUID), not "${scope.id}"`, {
      hint: "shinkei recover --user EMAIL finds a user by email.",
    });
  }
}

const byId = (id: string) => (a: string) => `${a}.id = ${quoteLiteral(id)}`;

async function one(sql: Queryable, query: string): Promise<Row | undefined> {
  const [row] = await sql.unsafe<{ r: Row }[]>(query);
  return row?.r;
}

function describeScope(scope: Scope): string {
  return scope.kind === "user"
    ? `account ${scope.email}`
    : scope.kind === "user-id"
      ? `user ${scope.id}`
      : `${scope.kind} ${scope.id}`;
}

async function accountOf(sql: Sql, graph: Graph, user: Row): Promise<Account> {
  const rows = await sql.begin((tx) => readScope(tx, graph, byId(String(user.id))));
  return {
    id: String(user.id),
    email: String(user.email),
    name: String(user.name),
    createdAt: String(user.created_at),
    rows: Object.fromEntries(
      graph.tables.filter((t) => t.name !== "users").map((t) => [t.name, rows.get(t.name)!.length]),
    ),
  };
}

/**
 * Work out what a recovery would do: walk the graph from the scope's table, find the root row in the
 * backup (and, for a user, whether the email now belongs to someone else), read both sides, compare.
 * Nothing is written.
 */
export async function buildPlan(
  live: Sql,
  sourceUrl: string,
  scope: Scope,
  file: string,
  mode?: AccountMode,
): Promise<Plan> {
  checkScope(scope);
  const source = connect(sourceUrl, { max: 2 });
  try {
    const graph = await ownershipGraph(live, rootTable[scope.kind]);
    const notes: string[] = [];
    // A table the live schema has but the backup lacks (made by hand after it) has nothing to bring back.
    const inSource = new Set(
      (
        await source<
          { n: string }[]
        >`select relname::text as n from pg_class c join pg_namespace s on s.oid = c.relnamespace
          where s.nspname = 'public'`
      ).map((r) => r.n),
    );
    for (const t of graph.tables.filter((t) => !inSource.has(t.name))) {
      graph.skipped.push({ table: t.name, reason: `not in ${file}` });
    }
    graph.tables = graph.tables.filter((t) => inSource.has(t.name));
    graph.edges = graph.edges.filter((e) => inSource.has(e.child));

    const root = quoteIdent(rootTable[scope.kind]);
    const where =
      scope.kind === "user"
        ? `pg_catalog.lower(r.email) = pg_catalog.lower(${quoteLiteral(scope.email)})`
        : `r.id = ${quoteLiteral(scope.id)}`;
    const found = await one(source, `select pg_catalog.to_jsonb(r) as r from public.${root} r where ${where}`);
    if (!found) {
      const now = await one(live, `select pg_catalog.to_jsonb(r) as r from public.${root} r where ${where}`);
      throw new ShinkeiError(
        "NOT_FOUND",
        `no ${describeScope(scope)} in ${file}` +
          (now
            ? " (it exists now, created after the backup: there is nothing older to bring back)"
            : " nor in the live database"),
        {
          hint: now
            ? "Pick an older backup with --from (shinkei backup --list)."
            : "Check the spelling, or pick another backup with --from (shinkei backup --list).",
        },
      );
    }
    const sourceRoot = String(found.id);
    let currentRoot = sourceRoot;
    let owner: string | undefined;
    let replaced: Plan["replaced"];
    let removeAccount: string | undefined;

    if (rootTable[scope.kind] === "users") {
      owner = String(found.email);
      const holder = await one(
        live,
        "select pg_catalog.to_jsonb(u) as r from public.users u " +
          `where pg_catalog.lower(u.email) = pg_catalog.lower(${quoteLiteral(owner)})`,
      );
      // The account in the backup may be here still, under another email: she changed hers and a
      // stranger took the old one, or someone took her account over and she registered again. The
      // data cannot tell which: the operator chooses, told so, and nothing is removed for it.
      const stillThere =
        holder && holder.id !== found.id
          ? await one(
              live,
              `select pg_catalog.to_jsonb(u) as r from public.users u where u.id = ${quoteLiteral(String(found.id))}`,
            )
          : undefined;
      if (stillThere) {
        const where =
          `the account in the backup (${found.id}) is still here, as ${String(stillThere.email)}, and ` +
          `${owner} now belongs to another account (${holder!.id})`;
        if (mode === "restore-account")
          throw new ShinkeiError(
            "ACCOUNT_CHOICE_REQUIRED",
            `${where}: --restore-account would remove that one for nothing`,
            {
              hint:
                "Use --into-current-account to give the recovered worlds to the account that holds the email now, " +
                "or recover each world into its old account with --world ID. Nothing was changed.",
            },
          );
        notes.push(
          `${where}: --into-current-account gives the worlds to the account that holds the email now; ` +
            "to give them back to the old account, recover each world with --world ID",
        );
      }
      if (holder && holder.id !== found.id) {
        replaced = { old: await accountOf(source, graph, found), current: await accountOf(live, graph, holder) };
        if (mode === "into-current-account") currentRoot = String(holder.id);
        else if (mode === "restore-account") {
          const owned = Object.entries(replaced.current.rows).filter(([, n]) => n > 0);
          // Its history of resets and verifications would go with it (ON DELETE CASCADE), and no undo
          // brings it back: the account is not empty. (Sessions and pending codes may go: login state.)
          const logged = await one(
            live,
            "select pg_catalog.to_jsonb(pg_catalog.to_regclass('public.account_events') is not null) as r",
          );
          const events = logged
            ? await one(
                live,
                "select pg_catalog.jsonb_build_object('n', pg_catalog.count(*)) as r from public.account_events e " +
                  `where e.user_id = ${quoteLiteral(String(holder.id))}`,
              )
            : undefined;
          if (Number(events?.n ?? 0) > 0) owned.push(["account_events", Number(events!.n)]);
          if (owned.length) {
            throw new ShinkeiError(
              "ACCOUNT_NOT_EMPTY",
              `the current account ${owner} (${holder.id}) owns data ` +
                `(${owned.map(([t, n]) => `${t} ${n}`).join(", ")}): --restore-account removes only an empty ` +
                `account`,
              {
                hint: "Use --into-current-account to move the recovered worlds to the current account instead.",
              },
            );
          }
          removeAccount = String(holder.id);
        }
      } else if (mode) notes.push(`--${mode} ignored: ${owner} is the same account as in the backup`);
    } else {
      const ownerRow = await one(
        source,
        scope.kind === "world"
          ? `select pg_catalog.to_jsonb(u) as r from public.users u join public.worlds w on w.owner_id = u.id where ` +
              `w.id = ${quoteLiteral(sourceRoot)}`
          : `select pg_catalog.to_jsonb(u) as r from public.users u join public.worlds w on w.owner_id = u.id join ` +
              `public.stories s on s.world_id = w.id where s.id = ${quoteLiteral(sourceRoot)}`,
      );
      owner = ownerRow ? String(ownerRow.email) : undefined;
    }

    const sourceRows = await source.begin((tx) => readScope(tx, graph, byId(sourceRoot)));
    if (replaced && mode === "into-current-account") reparent(graph, sourceRows, sourceRoot, currentRoot);
    const current = await live.begin((tx) => readScope(tx, graph, byId(currentRoot)));
    return {
      scope,
      graph,
      sourceRoot,
      currentRoot,
      owner,
      replaced,
      mode: replaced ? mode : undefined,
      removeAccount,
      confirmation: rootTable[scope.kind] === "users" ? owner! : sourceRoot,
      source: sourceRows,
      tables: diffScope(graph, sourceRows, current),
      notes,
    };
  } finally {
    await source.end({ timeout: 5 });
  }
}

/**
 * --into-current-account: the old account's row stays in the past, and every row that pointed at
 * it (worlds.owner_id, and any other column a migration adds) points at the current account instead.
 */
function reparent(graph: Graph, rows: Rows, from: string, to: string) {
  rows.set("users", []);
  for (const e of graph.edges.filter(
    (e) => e.parent === "users" && e.parentColumns.length === 1 && e.parentColumns[0] === "id",
  )) {
    for (const r of rows.get(e.child) ?? []) if (r[e.childColumns[0]!] === from) r[e.childColumns[0]!] = to;
  }
}
