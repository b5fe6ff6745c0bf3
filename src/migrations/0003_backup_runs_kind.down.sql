delete from backup_runs where kind <> 'backup';
alter table backup_runs drop constraint backup_runs_pkey;
alter table backup_runs add primary key (scheduled_for);
