#!/bin/bash
# Runs once, when the postgres container initialises an empty data volume (docker-entrypoint-initdb.d).
# The app connects as POSTGRES_APP_USER: it owns the app's database (so it can migrate, dump and
# restore it) and may create databases (for restore drills), but it is no superuser, so a hole in
# the app cannot reach other databases, roles or the server's files. The backup service connects as
# POSTGRES_BACKUP_USER: a member of the app role with the same rights, plus REPLICATION for the WAL
# stream and base backups, pg_read_all_stats to see how far the receiver trails, and
# pg_create_restore_point for point-in-time drills, which the app itself never needs.
# Safe to run again, e.g. for a volume made before this script existed:
#   docker compose exec -T postgres bash /docker-entrypoint-initdb.d/10-app-role.sh
# which also hands the tables an earlier setup created as the superuser over to the app role.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_user="${POSTGRES_APP_USER:-shinkei_app}" -v app_password="${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD}" \
  -v backup_user="${POSTGRES_BACKUP_USER:-shinkei_backup}" -v backup_password="${POSTGRES_BACKUP_PASSWORD:?set POSTGRES_BACKUP_PASSWORD}" \
  -v db="$POSTGRES_DB" <<'SQL'
select format('create role %I login password %L', :'app_user', :'app_password')
  where not exists (select from pg_roles where rolname = :'app_user') \gexec
select format('alter role %I with login nosuperuser createdb nocreaterole noreplication nobypassrls password %L', :'app_user', :'app_password') \gexec
select format('alter database %I owner to %I', :'db', :'app_user') \gexec
select format('create role %I login password %L', :'backup_user', :'backup_password')
  where not exists (select from pg_roles where rolname = :'backup_user') \gexec
select format('alter role %I with login nosuperuser createdb nocreaterole replication nobypassrls password %L', :'backup_user', :'backup_password') \gexec
select format('grant %I to %I', :'app_user', :'backup_user')
  where not pg_has_role(:'backup_user', :'app_user', 'MEMBER') \gexec
-- The receiver's position and lag (pg_stat_replication) are hidden from a role without it.
select format('grant pg_read_all_stats to %I', :'backup_user')
  where not pg_has_role(:'backup_user', 'pg_read_all_stats', 'MEMBER') \gexec
-- pitr drill marks its target with a named restore point; the function is the superuser's unless granted.
select format('grant execute on function pg_catalog.pg_create_restore_point(text) to %I', :'backup_user') \gexec
select format('grant all on schema public to %I', :'app_user') \gexec
-- Tables, views and free-standing sequences already in public (a volume from before this script).
-- Sequences of serial and identity columns follow their table.
select format('alter %s %s owner to %I',
              case c.relkind when 'S' then 'sequence' when 'v' then 'view' when 'm' then 'materialized view' else 'table' end,
              c.oid::regclass, :'app_user')
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm', 'S')
   and not exists (select from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i'))
   and pg_get_userbyid(c.relowner) <> :'app_user' \gexec
SQL
