-- One row per scheduled backup time: the first process to insert it takes the backup, so several
-- services pointed at one database yield exactly one backup per tick.
create table backup_runs (
  scheduled_for timestamptz primary key,
  kind text not null default 'backup',
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  host text not null,
  file text,
  error text
);
