/**
 * The import rules CI checks (`bun run check:deps`):
 * - no import cycle, unless one of its imports is type-only (those vanish at run time);
 * - no import from a lower layer to a higher one. Layers, lowest first; a folder imports only
 *   from its own layer and the ones below it:
 *     leaves < config < pg < jobs < storage < migrations/auth/mail < backup < wal < pitr < recover
 *     < guarded/service/metrics < server/cli
 */
const layers = [
  { name: "leaves", path: "^src/(errors|log|duration|bytes|envnames|memory)\\.ts$" },
  { name: "config", path: "^src/config/" },
  { name: "pg", path: "^src/pg/" },
  // The service layer's mechanics (a scheduled slot, a poller, the webhook) are used by the WAL
  // archive below it too; what backup-service starts, and when, stays on the service floor.
  { name: "jobs", path: "^src/service/(slot|poller|notify)\\.ts$" },
  { name: "storage", path: "^src/storage/" },
  { name: "migrations/auth/mail", path: "^src/(migrations|auth|mail)/" },
  // Safety copies live with the other guards (src/guarded/), but restore, pitr apply and recover,
  // below the guarded layer, each take one first; the file needs only the backup product, so it
  // sits on backup's floor.
  { name: "backup", path: ["^src/backup/", "^src/guarded/safety\\.ts$"] },
  { name: "wal", path: "^src/wal/" },
  { name: "pitr", path: "^src/pitr/" },
  { name: "recover", path: "^src/recover/" },
  {
    name: "guarded/service/metrics",
    path: ["^src/guarded/", "^src/service/", "^src/metrics/"],
    pathNot: ["^src/guarded/safety\\.ts$", "^src/service/(slot|poller|notify)\\.ts$"],
  },
  { name: "server/cli", path: ["^server/", "^cli/"] },
];

/** Imports that break the layers, each allowed by name with the reason; none today. */
const allowedUpArrows = {};

const paths = (layer) => [layer.path].flat();
const upArrows = layers.slice(0, -1).flatMap((layer, i) => {
  const higher = layers.slice(i + 1);
  const rule = (name, from, toNot) => ({
    name,
    comment: `${layer.name} must not import from a higher layer (${higher.map((l) => l.name).join(", ")})`,
    severity: "error",
    from,
    // A file a higher folder leaves out (pathNot) sits on a lower floor: reaching it is no up-arrow.
    to: { path: higher.flatMap(paths), pathNot: [...paths(layer), ...higher.flatMap((l) => [l.pathNot ?? []].flat()), ...toNot] },
  });
  const excepted = Object.keys(allowedUpArrows).filter((file) => paths(layer).some((p) => new RegExp(p).test(file.replace(/^\^/, "").replaceAll("\\", ""))));
  const id = layer.name.replaceAll("/", "-");
  return [
    rule(`no-up-arrow-from-${id}`, { path: paths(layer), pathNot: [layer.pathNot ?? [], excepted].flat() }, []),
    ...excepted.map((file) => rule(`no-up-arrow-from-${id}`, { path: file }, allowedUpArrows[file])),
  ];
});

module.exports = {
  forbidden: [
    {
      name: "no-runtime-cycle",
      comment: "An import cycle in which every import is a run-time one: modules that cannot be loaded, tested or moved apart.",
      severity: "error",
      from: {},
      to: { circular: true, dependencyTypesNot: ["type-only"], viaOnly: { dependencyTypesNot: ["type-only"] } },
    },
    ...upArrows,
    {
      name: "every-file-has-a-layer",
      comment: "A new folder under src/ gets a place in the layers above before anything imports it.",
      severity: "error",
      from: { path: "^(src|server|cli)/" },
      to: { path: "^(src|server|cli)/", pathNot: [...layers.flatMap(paths), "\\.(sql|tmpl|d\\.ts)$"] },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    // TypeScript 7 lacks the compiler API dependency-cruiser reads sources with; swc reads them
    // instead, and tells type-only imports apart by itself (tsPreCompilationDeps would ask for tsc):
    // a cycle through one is allowed, an up-arrow through one is not.
    tsPreCompilationDeps: false,
    parser: "swc",
    tsConfig: { fileName: "tsconfig.json" },
    exclude: { path: "^(node_modules|test)/" },
  },
};
