# syntax=docker/dockerfile:1

# Mailing: one binary, `mailing`. `serve` (the default) runs the API and the workers in one
# process; `api` and `worker` split them for a fleet (see compose.yaml).

# ---- build -------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace is needed: migrations/ and wit/ are compiled into the binary, and
# the engine's manifest names the tests/ target.
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binary is
# copied out of the cached target in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mailing \
    && install -m 0755 target/release/mailing /usr/local/bin/mailing

# ---- runtime -----------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to SMTP relays and HTTP APIs. curl: the healthcheck.
# postgresql-client: pg_dump/pg_restore for backups of a PostgreSQL store (major 15).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mailing \
    && useradd --system --uid 10001 --gid mailing --home-dir /app --no-create-home mailing \
    && mkdir -p /app/data /app/certs /app/backups \
    && chown -R mailing:mailing /app
COPY --from=builder /usr/local/bin/mailing /usr/local/bin/mailing
WORKDIR /app
USER mailing:mailing
# DATA_DIR defaults to ./data, which is /app/data here (SQLite files, the outbox of the
# `file` provider, generated development secrets).
ENV HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
EXPOSE 8080
# /health answers 503 when a supervised component was given up.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${HTTP_PORT}/health" || exit 1
ENTRYPOINT ["mailing"]
CMD ["serve"]
