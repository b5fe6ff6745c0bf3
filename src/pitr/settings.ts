/**
 * A base backup's own settings are not trusted: a scratch server started on it runs as the
 * server's OS user, and a setting that runs a program (recovery_end_command = 'id > FILE') or loads
 * a library would run whatever whoever wrote the backup wanted. Before the server starts, every such
 * line of postgresql.conf and postgresql.auto.conf is commented out, and so is every include
 * directive (it would read settings from a file we never saw).
 *
 * PostgreSQL's configuration grammar (guc-file.l) is one `name [=] value` per line, a name being
 * an identifier or `a.b`, case-insensitive, a quoted value never spanning lines; so a line-by-line
 * look at the name finds every setting the server would read from these files.
 */
const NAME =
  /^[ \t\r\f\v]*([A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*(?:\.[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)?)/;

const RUNS_OR_LOADS = new Set([
  "restore_command",
  "recovery_end_command",
  "archive_command",
  "archive_cleanup_command",
  "archive_library",
  "shared_preload_libraries",
  "session_preload_libraries",
  "local_preload_libraries",
  "dynamic_library_path",
  "jit_provider",
  "ssl_passphrase_command",
  // Paths the server would read or write as its user: other configuration, or a file it overwrites.
  "external_pid_file",
  "hba_file",
  "ident_file",
  "data_directory",
  "config_file",
  "include",
  "include_if_exists",
  "include_dir",
]);

/** Whether a setting's name is one that runs a program, loads code or reads another file. */
export function isUnsafeSetting(name: string): boolean {
  const n = name.toLowerCase();
  // Names of this shape added by later releases or extensions run or load something too.
  return RUNS_OR_LOADS.has(n) || /(?:_command|_librar(?:y|ies)|_preload_libraries)$/.test(n);
}

/** `text` with every unsafe setting commented out, and the names removed (in order). */
export function scrubSettings(text: string): { text: string; removed: string[] } {
  const removed: string[] = [];
  const lines = text.split("\n").map((line) => {
    const m = NAME.exec(line);
    if (!m || !isUnsafeSetting(m[1]!)) return line;
    removed.push(m[1]!.toLowerCase());
    return (
      `# removed by shinkei before recovery (runs a program, loads code or reads another ` +
      `file): ${m[1]!.toLowerCase()}`
    );
  });
  return { text: lines.join("\n"), removed };
}
