-- A mail carrying a code keeps its body sealed (AES-256-GCM) with a key that lives only in the
-- memory of the server process that queued it, never in the database: the code is not readable
-- from the table, a dump, a backup or the WAL. sealed_by names that key (a random id, not derived
-- from it), so only its process takes the row; past expires_at any server may drop it unsent.
alter table mail_outbox add column sealed_body bytea, add column sealed_by text;
