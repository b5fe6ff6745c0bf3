// Imported as text so `bun build --compile` embeds them: the binary needs no files beside it.
import schemaUp from "./0001_schema.sql" with { type: "text" };
import schemaDown from "./0001_schema.down.sql" with { type: "text" };
import backupRunsUp from "./0002_backup_runs.sql" with { type: "text" };
import backupRunsDown from "./0002_backup_runs.down.sql" with { type: "text" };
import backupRunsKindUp from "./0003_backup_runs_kind.sql" with { type: "text" };
import backupRunsKindDown from "./0003_backup_runs_kind.down.sql" with { type: "text" };
import accountCodesUp from "./0004_account_codes.sql" with { type: "text" };
import accountCodesDown from "./0004_account_codes.down.sql" with { type: "text" };
import mailOutboxUp from "./0005_mail_outbox.sql" with { type: "text" };
import mailOutboxDown from "./0005_mail_outbox.down.sql" with { type: "text" };
import recoverUndoUp from "./0006_recover_undo.sql" with { type: "text" };
import recoverUndoDown from "./0006_recover_undo.down.sql" with { type: "text" };
import mailOutboxSealedUp from "./0007_mail_outbox_sealed.sql" with { type: "text" };
import mailOutboxSealedDown from "./0007_mail_outbox_sealed.down.sql" with { type: "text" };

export type Migration = { version: number; name: string; up: string; down?: string };

/** In order. Append only: an applied migration's text must never change (its checksum is kept). */
export const migrations: readonly Migration[] = [
  { version: 1, name: "schema", up: schemaUp, down: schemaDown },
  { version: 2, name: "backup_runs", up: backupRunsUp, down: backupRunsDown },
  { version: 3, name: "backup_runs_kind", up: backupRunsKindUp, down: backupRunsKindDown },
  { version: 4, name: "account_codes", up: accountCodesUp, down: accountCodesDown },
  { version: 5, name: "mail_outbox", up: mailOutboxUp, down: mailOutboxDown },
  { version: 6, name: "recover_undo", up: recoverUndoUp, down: recoverUndoDown },
  { version: 7, name: "mail_outbox_sealed", up: mailOutboxSealedUp, down: mailOutboxSealedDown },
];
