#!/usr/bin/env bash
# `make test-image`: builds the image (scripts/image.sh, cached layers after the first time) and runs its
# `producer` and `worker` against the loopback services: migrate, define a repository, then the relay and a worker
# from the image sync it; the test passes when that JobResult is SUCCESS.
#
# The image runs as it would in a pod: its root filesystem mounted read-only, as its numeric user (10001), with
# only its environment, a tmpfs on /tmp and writable folders mounted on its volumes (GITFLEET_GIT_ROOT and the
# storage). Podman cannot start containers on this machine (crun refuses the host's hybrid cgroup hierarchy:
# "cgroups in hybrid mode not supported", after "setrlimit RLIMIT_NOFILE: Operation not permitted" for podman's
# default limits), so the image's root filesystem is run with the kernel's own tools instead: a private mount
# namespace (unshare), read-only bind mounts, and chroot to the image's user. No shell of the image is used.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test-image] %s\n' "$*" >&2; }

# GITFLEET_IMAGE: test that image as it is (built earlier) instead of building the current sources.
image=${GITFLEET_IMAGE:-$(scripts/image.sh)}
export BUILDAH_ISOLATION=chroot
vhost=gitfleet-image-test-$$
schema=image_test_$$
work=$(mktemp -d)
ctr=""
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -n "$ctr" ] && { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; }
    psql -q postgres://postgres@127.0.0.1:5432/gitfleet -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
    rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ctr=$(buildah from "$image")
root=$(buildah mount "$ctr")
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
mapfile -t image_env < <(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
[ "$user" = "10001:10001" ] || { log "the image's user is '$user', not 10001:10001"; exit 1; }

rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
mkdir -p "$work/git" "$work/storage" "$work/served"
chown 10001:10001 "$work/git" "$work/storage"

# A repository with one config context, served by git daemon on loopback.
git init -q --bare "$work/served/data.git"
git init -q -b main "$work/src"
mkdir -p "$work/src/config_contexts"
printf '{"_metadata": {"name": "from-image", "weight": 1000}, "ntp": ["10.0.0.1"]}\n' >"$work/src/config_contexts/ntp.json"
git -C "$work/src" add -A
git -C "$work/src" -c user.name=t -c user.email=t@t commit -q -m first
git -C "$work/src" push -q "$work/served/data.git" main
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
git daemon --listen=127.0.0.1 --port="$port" --export-all --base-path="$work/served" "$work/served" &
daemon=$!
metrics_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# run ARGS...: the image's command ARGS, as the image runs in a pod (see the top of this file).
run() {
    env -i "${image_env[@]}" \
        GITFLEET_DATABASE_URL=postgres://postgres@127.0.0.1:5432/gitfleet \
        GITFLEET_DATABASE_SCHEMA="$schema" \
        GITFLEET_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" \
        GITFLEET_METRICS_ADDR="${metrics_addr:-127.0.0.1:0}" \
        GITFLEET_LOG=warn \
        ROOT="$root" WORK="$work" \
        unshare --mount --fork -- /bin/sh -c '
            mount --make-rprivate / &&
            mount --bind "$ROOT" "$ROOT" && mount -o remount,bind,ro "$ROOT" &&
            mount -t tmpfs -o size=64m,mode=1777 tmpfs "$ROOT/tmp" &&
            mount -t proc proc "$ROOT/proc" &&
            mount --rbind /dev "$ROOT/dev" &&
            mount --bind "$WORK/git" "$ROOT/var/lib/gitfleet/git" &&
            mount --bind "$WORK/storage" "$ROOT/var/lib/gitfleet/storage" &&
            exec env -u ROOT -u WORK chroot --userspec=10001:10001 "$ROOT" "$@"' run "$@"
}

run /usr/local/bin/worker --help >/dev/null
run /usr/local/bin/producer migrate >/dev/null
if run /usr/local/bin/producer repo create --name "Image test" --remote-url "git://127.0.0.1:$port/data.git" \
        --provides extras.configcontext >"$work/created" 2>&1; then :; else cat "$work/created" >&2; exit 1; fi
job=$(grep -Eo '[0-9a-f]{8}-[0-9a-f-]{27}' "$work/created" | head -1)
[ -n "$job" ] || { log "no JobResult id in: $(cat "$work/created")"; exit 1; }
# A read-only root: the image's user cannot write outside its volumes.
run /usr/local/bin/worker --git-root /opt/gitfleet-git >"$work/readonly.log" 2>&1 &
readonly_pid=$!
for _ in $(seq 1 600); do kill -0 "$readonly_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$readonly_pid" 2>/dev/null; then
    kill "$readonly_pid"; log "the worker ran with its git root in the image's read-only root"; exit 1
fi
if wait "$readonly_pid"; then log "the worker exited 0 with its git root in the read-only root"; exit 1; fi
grep -q 'Read-only file system' "$work/readonly.log" || { log "expected a read-only refusal:"; cat "$work/readonly.log" >&2; exit 1; }
run /usr/local/bin/producer relay >"$work/relay.log" 2>&1 &
pids+=($!)
metrics_addr="127.0.0.1:$metrics_port" run /usr/local/bin/worker >"$work/worker.log" 2>&1 &
pids+=($!)

if ! run /usr/local/bin/producer job-result show "$job" --wait --timeout 120 --format json >"$work/job.json"; then
    log "the sync did not succeed:"; cat "$work/job.json" "$work/worker.log" "$work/relay.log" >&2; exit 1
fi
python3 - "$work/job.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
assert job["status"] == "SUCCESS", job
print(f"[test-image] the image's worker synced the repository: JobResult {job['id']} {job['status']}", file=sys.stderr)
PY
curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null
ls "$work/git" | grep -q . || { log "no mirror under the git volume"; exit 1; }
log "ok: $image ran read-only as 10001:10001 (producer migrate, repo create, relay; worker synced; /readyz answered)"
