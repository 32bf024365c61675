#!/usr/bin/env bash
# Property-based checks of the HTTP API against its own OpenAPI document: schemathesis
# (from PyPI) generates requests for every operation of /openapi.json, sends them with
# an admin's access token to the real `mailing serve`, and fails on any 5xx answer or
# any answer whose status, content type or body the document does not describe.
#
# Usage: .ci/schemathesis.sh [path/to/mailing]   (default: $CARGO_TARGET_DIR/debug/mailing)
# Env:   SCHEMATHESIS_MAX_EXAMPLES (default 25) bounds the examples per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${1:-$TARGET/debug/mailing}"
VENV="$(realpath -m "${SCHEMATHESIS_VENV:-$TARGET/schemathesis-venv}")"
BIN="$(realpath -m "$BIN")"
VERSION="4.32.5"

if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version | grep -q "$VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
PASSWORD="schemathesis-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# A fresh `mailing serve` in $WORK/$1, its admin's token in $TOKEN. The request
# limits are switched off: the run is a flood from one address by design.
start() {
  if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; fi
  env -i -C "$WORK" PATH="$PATH" DATA_DIR="$WORK/$1" HTTP_HOST=127.0.0.1 HTTP_PORT="$PORT" \
    PUBLIC_URL="http://127.0.0.1:$PORT" ADMIN_PASSWORD="$PASSWORD" \
    AUTH_SECRET_KEY="$SECRET" \
    API_RATE_LIMIT_PER_IP=0 API_RATE_LIMIT_PER_USER=0 BACKUP_ENABLED=false \
    BACKUP_DIR="$WORK/$1-backups" \
    LOG_FORMAT=json LOG_LEVEL=warn \
    "$BIN" serve >>"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  TOKEN="$(curl -fsS -H 'content-type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$PASSWORD\"}" \
    "http://127.0.0.1:$PORT/auth/login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
}
SECRET="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"

# Excluded: logout (it would revoke the run's own token) and backup restore (it
# restarts the process by design); both have their own end-to-end tests.
# Run from $WORK, so schemathesis's caches land there and not in the checkout.
run() {
  (cd "$WORK" && "$VENV/bin/schemathesis" "$@" "http://127.0.0.1:$PORT/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
    --exclude-path /auth/logout --exclude-path /admin/backup/restore \
    --workers 2 --no-color)
}
api() {
  curl -fsS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    ${3:+-d "$3"} "http://127.0.0.1:$PORT$2" >/dev/null
}

status=0
echo "--- pass 1: an empty deployment, every identifier generated ---"
start empty
run run || status=$?

# Pass 2: one of each resource exists with id 1 (a fresh database numbers from 1; the
# admin is user 1), and every `{id}` is 1, so reads, updates and deletes answer from
# real rows instead of 404s.
if [ "$status" -eq 0 ]; then
  start seeded
  api POST /api/v1/lists '{"name":"Fuzz"}'
  api POST /api/v1/lists/1/subscribers '[{"email":"a@example.com","name":"A","attributes":{"plan":"pro"}},{"email":"b@example.com"}]'
  api POST /api/v1/templates '{"name":"T","subject":"Hi {{ subscriber.name }}","html":"<p>{{ subscriber.email }}</p>"}'
  api POST /api/v1/campaigns '{"name":"C","template_id":1,"list_ids":[1],"from":"news@example.com"}'
  api POST /api/v1/tx '{"template_id":1,"to":{"email":"c@example.com"},"from":"news@example.com"}'
  api POST /api/v1/suppressions '{"email":"d@example.com"}'
  api POST /api/v1/api-keys '{"name":"fuzz","role":"viewer"}'
  printf '[parameters]\n"path.id" = 1\n' >"$WORK/ids.toml"
  echo "--- pass 2: one of each resource, every {id} = 1 ---"
  run --config-file "$WORK/ids.toml" run || status=$?
fi
if [ "$status" -ne 0 ]; then
  echo "--- server log (last 60 lines) ---"
  tail -n 60 "$WORK/server.log"
fi
exit "$status"
