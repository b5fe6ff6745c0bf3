/**
 * One error class for everything shinkei reports on purpose. The `code` is stable (scripts and
 * clients may match on it); the edges turn it into an HTTP status or an exit code from this table.
 */
const codes = {
  CONFIG_INVALID: { exit: 2, status: 500 },
  USAGE: { exit: 2, status: 400 },
  DB_UNREACHABLE: { exit: 2, status: 503 },
  DB_ERROR: { exit: 1, status: 500 },
  MIGRATION_CHANGED: { exit: 1, status: 500 },
  MIGRATION_FAILED: { exit: 1, status: 500 },
  MIGRATION_UNKNOWN: { exit: 1, status: 500 },
  MIGRATION_IRREVERSIBLE: { exit: 1, status: 500 },
  MIGRATION_PENDING: { exit: 1, status: 409 },
  LOCKED: { exit: 75, status: 409 },
  // HTTP-facing
  BAD_JSON: { exit: 2, status: 400 },
  INVALID_INPUT: { exit: 2, status: 400 },
  UNAUTHORIZED: { exit: 1, status: 401 },
  INVALID_CREDENTIALS: { exit: 1, status: 401 },
  EMAIL_TAKEN: { exit: 1, status: 409 },
  NOT_FOUND: { exit: 1, status: 404 },
  PAYLOAD_TOO_LARGE: { exit: 2, status: 413 },
  UNSUPPORTED_MEDIA_TYPE: { exit: 2, status: 415 },
  TOO_MANY_REQUESTS: { exit: 1, status: 429 },
  BUSY: { exit: 1, status: 503 },
  NOT_READY: { exit: 1, status: 503 },
  // backups and guarded operations
  BACKUP_FAILED: { exit: 1, status: 500 },
  BACKUP_NOT_FOUND: { exit: 1, status: 404 },
  BACKUP_CORRUPT: { exit: 1, status: 500 },
  BACKUP_STALE: { exit: 1, status: 500 },
  RESTORE_FAILED: { exit: 1, status: 500 },
  /** A restore's spool would have left too little free where it is written (BACKUP_DIR). */
  RESTORE_NO_SPACE: { exit: 1, status: 507 },
  // selective recovery (recover)
  RECOVER_CONFLICT: { exit: 1, status: 409 },
  RECOVER_FAILED: { exit: 1, status: 500 },
  RECORD_REFUSED: { exit: 1, status: 422 },
  ALREADY_UNDONE: { exit: 1, status: 409 },
  ACCOUNT_REPLACED: { exit: 1, status: 409 },
  PITR_UNAVAILABLE: { exit: 2, status: 501 },
  PG_TOOL_MISSING: { exit: 2, status: 500 },
  PG_VERSION_MISMATCH: { exit: 2, status: 500 },
  STORE_FAILED: { exit: 1, status: 502 },
  DATABASE_NOT_EMPTY: { exit: 1, status: 409 },
  NOTHING_TO_UNDO: { exit: 1, status: 409 },
  ACCOUNT_CHOICE_REQUIRED: { exit: 1, status: 409 },
  ACCOUNT_NOT_EMPTY: { exit: 1, status: 409 },
  SCHEMA_TOO_NEW: { exit: 1, status: 409 },
  NOT_A_TABLE: { exit: 1, status: 409 },
  NOT_OURS: { exit: 1, status: 403 },
  UNSAFE_PATH: { exit: 1, status: 500 },
  DIRECTORY_EXISTS: { exit: 1, status: 409 },
  PRIVILEGE_MISSING: { exit: 1, status: 403 },
  KEY_MISSING: { exit: 1, status: 500 },
  KEY_INVALID: { exit: 1, status: 500 },
  DECRYPT_FAILED: { exit: 1, status: 500 },
  KEY_FILE_UNWRITABLE: { exit: 1, status: 500 },
  // the guard in front of every destructive command (src/guarded/guard.ts)
  PRODUCTION_REFUSED: { exit: 1, status: 403 },
  CONFIRMATION_REQUIRED: { exit: 1, status: 403 },
  CONFIRMATION_MISMATCH: { exit: 1, status: 403 },
  // a restore's input and its transaction
  RESTORE_UNSAFE: { exit: 1, status: 422 },
  RESTORE_AS_SUPERUSER: { exit: 1, status: 422 },
  UNENCRYPTED_BACKUP: { exit: 1, status: 422 },
  UNSIGNED_BACKUP: { exit: 1, status: 422 },
  ARCHIVE_UNTRUSTED: { exit: 1, status: 422 },
  LOCK_LOST: { exit: 1, status: 500 },
  /** A COMMIT whose answer was lost, and PostgreSQL could not say (yet) whether it took effect. */
  COMMIT_UNKNOWN: { exit: 1, status: 500 },
  ABORTED: { exit: 1, status: 400 },
  CANCELLED: { exit: 130, status: 400 },
  // account recovery by email
  MAIL_DISABLED: { exit: 1, status: 503 },
  INVALID_CODE: { exit: 1, status: 400 },
  EMAIL_NOT_VERIFIED: { exit: 1, status: 403 },
  // The ops listener (metrics, status page)
  LISTEN_FAILED: { exit: 2, status: 500 },
  // continuous archiving
  WAL_SLOT_UNBOUNDED: { exit: 2, status: 500 },
  WAL_ARCHIVE_FAILED: { exit: 1, status: 500 },
  WAL_SLOT_WRONG_TYPE: { exit: 2, status: 500 },
  WAL_RECEIVER_SYNCHRONOUS: { exit: 2, status: 500 },
  UNSUPPORTED_LAYOUT: { exit: 2, status: 500 },
  PITR_AT_RISK: { exit: 1, status: 500 },
  PITR_OUT_OF_WINDOW: { exit: 1, status: 400 },
  RECOVERY_FAILED: { exit: 1, status: 500 },
} as const;

export type ErrorCode = keyof typeof codes;

export class ShinkeiError extends Error {
  readonly code: ErrorCode;
  readonly hint?: string;
  /** Extra fields for the client or log (field errors, retry-after seconds); never secrets. */
  readonly details?: Record<string, unknown>;

  constructor(
    code: ErrorCode,
    message: string,
    options: { hint?: string; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "ShinkeiError";
    this.code = code;
    this.hint = options.hint;
    this.details = options.details;
  }

  get exitCode(): number {
    return codes[this.code].exit;
  }

  get status(): number {
    return codes[this.code].status;
  }
}
