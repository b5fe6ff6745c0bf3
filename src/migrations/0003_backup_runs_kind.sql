-- Drills are scheduled too: a slot is a (time, kind) pair, so a backup and a drill at the same
-- minute do not take each other's turn.
alter table backup_runs drop constraint backup_runs_pkey;
alter table backup_runs add primary key (scheduled_for, kind);
