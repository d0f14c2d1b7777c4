#!/usr/bin/env bash
# make bench-s3s-fs: the large-repository benchmark's S3 runs (10,000 files, direct and behind the 20 ms proxy)
# against s3s-fs, an S3 server written in Rust that keeps objects as files, instead of moto. moto answers each
# request with Python and its global lock on the machine's two cores, so against it the benchmark measures moto;
# this run shows what the worker itself does with a server that keeps up. s3s-fs is installed with cargo at a
# pinned version (newer ones need a newer rustc), serves on loopback with the benchmark's credentials, keeps its
# data on tmpfs (as moto keeps it in memory) when /dev/shm is writable, and is stopped and its data removed on
# exit. It ignores ACLs, which is why the tests stay on moto. Writes its own table into BENCHMARKS.md.
# Settings (environment): GITFLEET_BENCH_S3S_PORT (5099).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.14.1
PORT=${GITFLEET_BENCH_S3S_PORT:-5099}
BIN="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
log() { echo "[bench-s3s-fs] $*" >&2; }

if [ "$("$BIN" --version 2>/dev/null)" != "s3s-fs $VERSION" ]; then
  log "installing s3s-fs $VERSION with cargo"
  "${CARGO:-cargo}" install s3s-fs --version "$VERSION" --features binary --locked
fi

# Another server on the port would answer in its place, and the tables would name the wrong one.
if curl -s -m 2 -o /dev/null "http://127.0.0.1:$PORT/"; then
  log "something already listens on 127.0.0.1:$PORT; stop it or set GITFLEET_BENCH_S3S_PORT"
  exit 1
fi

base=/dev/shm where="data on tmpfs"
if [ ! -d "$base" ] || [ ! -w "$base" ]; then base=${TMPDIR:-/tmp} where="data on disk"; fi
data=$(mktemp -d "$base/gitfleet-s3s-fs.XXXXXX")
mkdir "$data/gitfleet" # a bucket is a folder of the data directory
"$BIN" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench "$data/" >"$data.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 50); do
  curl -s -m 2 -o /dev/null "http://127.0.0.1:$PORT/" && break
  kill -0 "$pid" 2>/dev/null || { cat "$data.log" >&2; log "s3s-fs did not start"; exit 1; }
  sleep 0.1
done
log "s3s-fs $VERSION on 127.0.0.1:$PORT, $where"

GITFLEET_S3_PORT=$PORT GITFLEET_BUCKET=gitfleet GITFLEET_BENCH_LARGE_SIZES=none \
  GITFLEET_BENCH_S3_SERVER="s3s-fs $VERSION on loopback, $where" GITFLEET_BENCH_SECTION=large-s3s-fs \
  "${CARGO:-cargo}" run --profile perf -p gitfleet-tests --bin bench_large -- --write BENCHMARKS.md
