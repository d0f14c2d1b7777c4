#!/usr/bin/env bash
# make demo: services, a build, two workers and the outbox relay; then the example repository is created, synced,
# changed and synced again, and the JobResults are printed. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.state/demo
TARGET=${CARGO_TARGET_DIR:-target}
export GITFLEET_DATABASE_SCHEMA=demo
export GITFLEET_AMQP_PREFIX=gitfleet-demo
export GITFLEET_GIT_ROOT="$PWD/$STATE/git"
export GITFLEET_DEFER_DELAY_MS=200
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "services"
scripts/services.sh up

step "build"
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
psql -w -q -h 127.0.0.1 -U postgres -d gitfleet -c "DROP SCHEMA IF EXISTS demo CASCADE" >/dev/null
for q in work delay dead; do rabbitmqctl -q -p gitfleet delete_queue "gitfleet-demo.$q" </dev/null >/dev/null 2>&1 || true; done
"$PRODUCER" migrate

pids=()
stop() {
  [ "${#pids[@]}" = 0 ] && return
  step "stopping the workers and the relay"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT

step "two workers and the outbox relay (logs in $STATE/*.log)"
GITFLEET_WORKER_NAME=worker-1 "$WORKER" >"$STATE/worker-1.log" 2>&1 & pids+=($!)
GITFLEET_WORKER_NAME=worker-2 "$WORKER" >"$STATE/worker-2.log" 2>&1 & pids+=($!)
"$PRODUCER" relay >"$STATE/relay.log" 2>&1 & pids+=($!)

step "producer repo create"
id=$("$PRODUCER" repo create --name "Demo Data" --remote-url "file://$PWD/$STATE/remote.git" --branch main \
  --provides extras.configcontextschema,extras.configcontext,extras.exporttemplate,extras.graphqlquery,extras.job)
echo "JobResult $id"
"$PRODUCER" job-result show "$id" --wait --timeout 120

step "a new commit upstream, then producer repo sync"
echo "# changed" >>"$STATE/work/README.md"
git -C "$STATE/work" commit -qam "Change the README" && git -C "$STATE/work" push -q origin main
id=$("$PRODUCER" repo sync --name "Demo Data")
"$PRODUCER" job-result show "$id" --wait --timeout 120

step "producer repo list"
"$PRODUCER" repo list
