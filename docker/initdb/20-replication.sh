#!/bin/sh
# Run once by the postgres image when it creates the cluster (docker-entrypoint-initdb.d):
# replication connections match no `all` line in pg_hba.conf, so the backup service's WAL stream
# (pg_receivewal) and base backups (pg_basebackup) need one of their own.
set -eu
hba="${PGDATA:?PGDATA is not set}/pg_hba.conf"
if ! grep -q '^host[[:space:]]\+replication[[:space:]]\+all[[:space:]]\+all' "$hba"; then
  printf '\n# shinkei backup service: WAL streaming and base backups\nhost replication all all scram-sha-256\n' >> "$hba"
fi
