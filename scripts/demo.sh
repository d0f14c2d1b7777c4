#!/usr/bin/env bash
# make demo: services, a build, two workers and the outbox relay; then the example repository is created, synced,
# changed and synced again (once through a signed webhook delivery to `producer serve`), and the JobResults are
# printed, with the web UI's address and a token to sign in with (`DEMO_UI=1` keeps it all running until Ctrl-C).
# Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.state/demo
TARGET=${CARGO_TARGET_DIR:-target}
export GITFLEET_DATABASE_SCHEMA=demo
export GITFLEET_AMQP_PREFIX=gitfleet-demo
export GITFLEET_GIT_ROOT="$PWD/$STATE/git"
export GITFLEET_DEFER_DELAY_MS=200
# Files go to a local directory by default; `DEMO_S3=1 make demo` sends them to the S3 server of `make services`.
if [ "${DEMO_S3:-0}" = 1 ]; then
  export AWS_STORAGE_BUCKET_NAME=gitfleet AWS_S3_ENDPOINT_URL=http://127.0.0.1:5000 AWS_S3_REGION_NAME=us-east-1
  export AWS_S3_ADDRESSING_STYLE=path AWS_S3_ACCESS_KEY_ID=demo AWS_S3_SECRET_ACCESS_KEY=demo AWS_LOCATION=demo
  export GITFLEET_STORAGES='{"extras.job": {"upload_to": "software_images", "default_acl": "private"}}'
else
  export GITFLEET_STORAGE_ROOT="$PWD/$STATE/storage"
fi
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "services"
scripts/services.sh up

step "build"
scripts/test-deps.sh
cargo build --bins

PRODUCER="$TARGET/debug/producer"
WORKER="$TARGET/debug/worker"

step "a local git remote from examples/demo-repo"
rm -rf "$STATE"; mkdir -p "$STATE"
git init -q -b main "$STATE/work"
cp -R examples/demo-repo/. "$STATE/work/"
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.net GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.net
git -C "$STATE/work" add -A && git -C "$STATE/work" commit -qm "Demo data"
git clone -q --bare "$STATE/work" "$STATE/remote.git"
git -C "$STATE/work" remote add origin "$PWD/$STATE/remote.git"
echo "remote: file://$PWD/$STATE/remote.git"

# A clean slate for the demo's own schema and queues.
PGOPTIONS="-c client_min_messages=warning" psql -w -q -h 127.0.0.1 -U postgres -d gitfleet -c "DROP SCHEMA IF EXISTS demo CASCADE" >/dev/null
for q in work delay deferred dead; do rabbitmqctl -q -p gitfleet delete_queue "gitfleet-demo.$q" </dev/null >/dev/null 2>&1 || true; done
"$PRODUCER" migrate

pids=()
# Stops what this script started, on every way out: the end, an error, Ctrl-C, a kill, or a reader that went away
# (`make demo | head` closes the pipe: SIGPIPE, whose default would end the script without running any trap).
stop() {
  # SIGPIPE ignored from here: with the reader gone, a write fails instead of ending the script before the kill.
  trap '' PIPE
  trap - EXIT INT TERM HUP
  [ "${#pids[@]}" = 0 ] && return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
  printf '\n==> stopped the workers and the relay\n' >&2 2>/dev/null || true
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM HUP
trap 'stop; exit 141' PIPE

step "two workers and the outbox relay (logs in $STATE/*.log)"
GITFLEET_WORKER_NAME=worker-1 "$WORKER" >"$STATE/worker-1.log" 2>&1 & pids+=($!)
GITFLEET_WORKER_NAME=worker-2 "$WORKER" >"$STATE/worker-2.log" 2>&1 & pids+=($!)
"$PRODUCER" relay >"$STATE/relay.log" 2>&1 & pids+=($!)

step "worker check (what a data repository's CI runs; no services needed)"
"$WORKER" check examples/demo-repo --name "Demo Data" --inventory examples/inventory.json | tail -3

step "producer inventory import (the scope objects context lookups resolve against)"
"$PRODUCER" inventory import examples/inventory.json

step "producer repo create"
id=$("$PRODUCER" repo create --name "Demo Data" --remote-url "file://$PWD/$STATE/remote.git" --branch main \
  --provides extras.configcontextschema,extras.configcontext,extras.exporttemplate,extras.graphqlquery,extras.job)
echo "JobResult $id"
"$PRODUCER" job-result show "$id" --wait --timeout 120

step "a new commit upstream (one context changed, one query removed), then producer repo sync"
sed -i 's/10.0.0.11/10.0.0.12/' "$STATE/work/config_contexts/ntp.yaml"
git -C "$STATE/work" rm -q graphql_queries/edge_devices.gql
git -C "$STATE/work" commit -qam "Move an NTP server, drop a query" && git -C "$STATE/work" push -q origin main
id=$("$PRODUCER" repo sync --name "Demo Data")
"$PRODUCER" job-result show "$id" --wait --timeout 120

step "producer serve, and a signed GitHub push delivery for one more commit"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
GITFLEET_HTTP_ADDR="127.0.0.1:$port" GITFLEET_SECRETS_WEBHOOKS_TOKEN=demo-webhook-secret \
  "$PRODUCER" serve >"$STATE/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
sed -i 's/10.0.0.12/10.0.0.13/' "$STATE/work/config_contexts/ntp.yaml"
git -C "$STATE/work" commit -qam "Move the NTP server again" && git -C "$STATE/work" push -q origin main
head=$(git -C "$STATE/work" rev-parse HEAD)
body="{\"ref\": \"refs/heads/main\", \"after\": \"$head\", \"repository\": {\"clone_url\": \"file://$PWD/$STATE/remote.git\"}}"
signature=$(printf '%s' "$body" | openssl dgst -sha256 -hmac demo-webhook-secret | sed 's/^.*= //')
answer=$(curl -fsS -X POST "http://127.0.0.1:$port/hooks/github" -H "Content-Type: application/json" \
  -H "X-GitHub-Event: push" -H "X-GitHub-Delivery: demo-$head" -H "X-Hub-Signature-256: sha256=$signature" -d "$body")
echo "$answer"
id=$(printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["job_result_ids"][0])')
"$PRODUCER" job-result show "$id" --wait --timeout 120 | tail -4

step "producer repo list, and what the database holds now"
"$PRODUCER" repo list
psql -w -h 127.0.0.1 -U postgres -d gitfleet -c "SET search_path = demo" \
  -c "SELECT name, weight, data FROM config_context ORDER BY name" \
  -c "SELECT module_name, job_class_name, name, installed FROM job"

step "where the files went (storage, key, size in bytes): worker storage ls"
"$WORKER" storage ls

step "the web UI"
token=$("$PRODUCER" token create --name demo --scopes admin)
echo "UI:    http://127.0.0.1:$port/ui/"
echo "token: $token   (sign in with it; admin scope)"
if [ "${DEMO_UI:-0}" = 1 ]; then
  echo "the UI, the workers and the relay keep running until Ctrl-C"
  wait "${pids[@]}"
else
  echo "(DEMO_UI=1 make demo leaves it running until interrupted)"
fi
