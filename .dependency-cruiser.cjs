/**
 * The import rules CI checks (`bun run check:deps`):
 * - no import cycle, unless one of its imports is type-only (those vanish at run time);
 * - no import from a lower layer to a higher one. Layers, lowest first; a folder imports only
 *   from its own layer and the ones below it:
 *     leaves < config < pg < storage < migrations/auth/mail < backup < wal < pitr < recover
 *     < guarded/service/metrics < server/cli
 */
const layers = [
  { name: "leaves", path: "^src/(errors|log|duration|bytes|envnames)\\.ts$" },
  { name: "config", path: "^src/config/" },
  { name: "pg", path: "^src/pg/" },
  { name: "storage", path: "^src/storage/" },
  { name: "migrations/auth/mail", path: "^src/(migrations|auth|mail)/" },
  // Safety copies live with the other guards (src/guarded/), but restore, pitr apply and recover,
  // below the guarded layer, each take one first; the file needs only the backup product, so it
  // sits on backup's floor.
  { name: "backup", path: ["^src/backup/", "^src/guarded/safety\\.ts$"] },
  { name: "wal", path: "^src/wal/" },
  { name: "pitr", path: "^src/pitr/" },
  { name: "recover", path: "^src/recover/" },
  // schedule.ts and notify.ts are service files still at src/'s root until they move to src/service/.
  {
    name: "guarded/service/metrics",
    path: ["^src/guarded/", "^src/service/", "^src/metrics/", "^src/(schedule|notify)\\.ts$"],
    pathNot: "^src/guarded/safety\\.ts$",
  },
  { name: "server/cli", path: ["^server/", "^cli/"] },
];

/**
 * Imports that break the layers today, each allowed by name until its owner moves it. They belong
 * to the service layer's reshape (schedule.ts and notify.ts to src/service/, with the scheduled-slot
 * helper that takes the scheduling out of wal/service.ts and pitr/drill.ts): delete a line when
 * that lands, and the layer rule holds for that file from then on.
 */
const allowedUpArrows = {
  "^src/wal/service\\.ts$": ["^src/pitr/drill\\.ts$", "^src/(schedule|notify)\\.ts$"],
  "^src/pitr/drill\\.ts$": ["^src/(schedule|notify)\\.ts$"],
};

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
  const excepted = Object.keys(allowedUpArrows).filter((file) => paths(layer).some((p) => file.startsWith(p)));
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
