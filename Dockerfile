# Build the single binary, then run it in a slim image whose PostgreSQL client tools have the
# same major version as the server (PG_MAJOR; compose.yaml passes the one its postgres runs).
ARG PG_MAJOR=17

FROM oven/bun:1.4.5 AS build
WORKDIR /src
COPY package.json bun.lock ./
RUN bun install --frozen-lockfile --production
COPY cli cli
COPY server server
COPY src src
COPY tsconfig.json ./
RUN bun build --compile --minify --bytecode --format=esm cli/main.ts --outfile /out/shinkei

FROM debian:bookworm-slim
ARG PG_MAJOR
# The PostgreSQL project's own Debian repository carries every supported major's client tools.
# The server package too: pg_receivewal and pg_basebackup come with the client, and a scratch
# recovery of a base backup needs the server binaries (never started as the image's main process).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc | gpg --dearmor -o /usr/share/keyrings/pgdg.gpg \
 && echo "deb [signed-by=/usr/share/keyrings/pgdg.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" "postgresql-${PG_MAJOR}" \
 && apt-get purge -y gnupg && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/shinkei /usr/local/bin/shinkei
RUN useradd --system --uid 10001 --home-dir /app shinkei && mkdir -p /app /backups && chown shinkei /app /backups
USER shinkei
WORKDIR /app
ENV BACKUP_DIR=/backups
EXPOSE 8000
ENTRYPOINT ["shinkei"]
CMD ["serve"]
