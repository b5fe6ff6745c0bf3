# Build the single binary, then run it in a slim image whose PostgreSQL client tools have the
# same major version as the server (PG_MAJOR; compose.yaml passes the one its postgres runs).
#   PG_SOURCE=pgdg    (default) the PostgreSQL project's repository: every supported major
#   PG_SOURCE=debian  Debian's own packages only (bookworm carries 15): builds from a Debian
#                     mirror alone, no other repository or key
ARG PG_MAJOR=17
ARG PG_SOURCE=pgdg

FROM oven/bun:1.4.5 AS build
WORKDIR /src
COPY package.json bun.lock ./
COPY patches patches
RUN bun install --frozen-lockfile --production
COPY cli cli
COPY server server
COPY src src
COPY tsconfig.json ./
# --splitting: a command loads only the code it runs (what it imports lazily stays unread).
RUN bun build --compile --minify --bytecode --splitting --format=esm cli/main.ts --outfile /out/shinkei

FROM debian:bookworm-slim
ARG PG_MAJOR
ARG PG_SOURCE
# The server package too: pg_receivewal and pg_basebackup come with the client, and a scratch
# recovery of a base backup needs the server binaries (never started as the image's main process,
# so no cluster is made at install: create_main_cluster=false before the server package comes).
# The repository's signing key ships in Debian's postgresql-common: nothing is fetched outside apt.
# curl is the backend's health check.
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl postgresql-common; \
    sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf; \
    grep -qx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf; \
    case "$PG_SOURCE" in \
      pgdg) echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" > /etc/apt/sources.list.d/pgdg.list; \
            apt-get update ;; \
      debian) ;; \
      *) echo "PG_SOURCE must be pgdg or debian, not $PG_SOURCE" >&2; exit 1 ;; \
    esac; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" "postgresql-${PG_MAJOR}"; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    test -z "$(ls -A /etc/postgresql 2>/dev/null)"
COPY --from=build /out/shinkei /usr/local/bin/shinkei
# One user for both services (backend and backup), so the backend reads what the backup service
# writes without any file being opened to others. /backups is a named volume they share.
RUN useradd --system --uid 10001 --user-group --home-dir /app shinkei && mkdir -p /app /backups && chown shinkei:shinkei /app /backups
USER shinkei
WORKDIR /app
ENV BACKUP_DIR=/backups
EXPOSE 8000
ENTRYPOINT ["shinkei"]
CMD ["serve"]
