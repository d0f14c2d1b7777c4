#!/usr/bin/env bash
# `make test-api`: fuzzes a running `producer serve` from its own OpenAPI document (schemas/openapi.json) with
# schemathesis (PyPI, installed here when missing): no answer may be a 5xx, and every status, content type and body
# must be the document's. Bounded in examples per operation and in time. The server runs on a free loopback port
# against its own PostgreSQL schema, with an admin token, and both are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test-api] %s\n' "$*" >&2; }

SCHEMATHESIS_VERSION=4.32.5
if ! python3 -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
    log "installing schemathesis==$SCHEMATHESIS_VERSION from PyPI"
    python3 -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >/dev/null 2>&1 \
        || python3 -m pip install -q --disable-pip-version-check --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION" >/dev/null
fi

cargo build -q -p gitfleet-producer --bin producer
producer="${CARGO_TARGET_DIR:-target}/debug/producer"
export GITFLEET_DATABASE_URL="${GITFLEET_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/gitfleet}"
export GITFLEET_DATABASE_SCHEMA="api_fuzz_$$"
export GITFLEET_LOG=warn
# Long polls held at most 2 s, so a generated `?wait=280` on a PENDING JobResult stays within the request timeout.
export GITFLEET_API_MAX_WAIT_SECS=2
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export GITFLEET_HTTP_ADDR="127.0.0.1:$port"
workdir=$(mktemp -d)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    psql -q "$GITFLEET_DATABASE_URL" -c "DROP SCHEMA IF EXISTS $GITFLEET_DATABASE_SCHEMA CASCADE" >/dev/null 2>&1 || true
    rm -rf "$workdir"
}
trap cleanup EXIT

token=$("$producer" token create --name fuzz --scopes admin)
git init -q -b main "$workdir/remote" && git -C "$workdir/remote" -c user.name=t -c user.email=t@t commit -q --allow-empty -m one
"$producer" repo create --name Fuzzed --remote-url "file://$workdir/remote" >/dev/null
"$producer" serve >"$workdir/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

log "fuzzing http://127.0.0.1:$port from schemas/openapi.json"
# The coverage phase is left out: on this machine's CPython 3.11.7 it sometimes stops with a SystemError inside
# ast.parse (hypothesis describing one of its own lambdas), an error of the tool, not a finding about the server.
status=0
schemathesis run schemas/openapi.json --url "http://127.0.0.1:$port" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${GITFLEET_FUZZ_EXAMPLES:-10}" --max-time "${GITFLEET_FUZZ_SECONDS:-120}" --seed 1 \
    --workers 2 --request-timeout 30 --no-color --report junit --report-dir "$workdir/report" \
    --phases examples,fuzzing || status=$?
if [ "$status" != 0 ]; then
    log "server log (panics and errors):"
    grep -E "panicked at|ERROR" -A2 "$workdir/server.log" | grep -v "^ *[0-9]*: \| at /" | head -n 60 >&2 || true
    cp "$workdir/server.log" "${TMPDIR:-/tmp}/gitfleet-test-api-server.log" 2>/dev/null || true
fi
exit "$status"
