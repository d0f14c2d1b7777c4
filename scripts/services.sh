#!/usr/bin/env bash
# Makes sure PostgreSQL, RabbitMQ and an S3-compatible server (moto) run on loopback, installing them from the
# package registries when missing, and creates gitfleet's database, vhost and bucket. Idempotent.
#
#   scripts/services.sh up      start what is not running (default)
#   scripts/services.sh down    stop only what `up` started
#   scripts/services.sh status  say what answers
#
# Settings (environment): GITFLEET_PG_PORT (5432), GITFLEET_AMQP_PORT (5672), GITFLEET_S3_PORT (5000),
# GITFLEET_DB (gitfleet), GITFLEET_VHOST (gitfleet), GITFLEET_BUCKET (gitfleet), GITFLEET_SERVICES_DIR (state).
set -euo pipefail

PG_PORT=${GITFLEET_PG_PORT:-5432}
AMQP_PORT=${GITFLEET_AMQP_PORT:-5672}
S3_PORT=${GITFLEET_S3_PORT:-5000}
DB=${GITFLEET_DB:-gitfleet}
VHOST=${GITFLEET_VHOST:-gitfleet}
BUCKET=${GITFLEET_BUCKET:-gitfleet}
STATE=${GITFLEET_SERVICES_DIR:-/var/tmp/gitfleet-services}
STARTED="$STATE/started"   # one line per service this script started

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not become ready within ${limit}s"
    sleep 0.5
  done
}

mark_started() { mkdir -p "$STATE"; grep -qx "$1" "$STARTED" 2>/dev/null || echo "$1" >>"$STARTED"; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  [ "$(id -u)" = 0 ] || die "installing $* needs root"
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "installing $*"
  # policy-rc.d keeps the packages from starting their services with their own settings: this script starts them,
  # on loopback.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ "$created" = 1 ] && rm -f "$policy"
  return 0
}

# ---------------------------------------------------------------------------------------------------- PostgreSQL
pg_ready() { PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; }
pg_bindir() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

pg_up() {
  if command -v psql >/dev/null && pg_ready; then log "PostgreSQL answers on 127.0.0.1:$PG_PORT"; pg_db; return; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local cluster; cluster=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3==p {print $1, $2, $4; exit}')
  if [ -n "$cluster" ]; then
    # The machine's own cluster on that port (Debian's): start it if it is down, and let loopback in with trust.
    read -r ver name state <<<"$cluster"
    if [ "$state" != online ]; then
      log "starting PostgreSQL cluster $ver/$name"
      pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
      mark_started "pg-cluster $ver $name"
    fi
    if ! pg_ready; then
      local hba; hba=$(runuser -u postgres -- psql -p "$PG_PORT" -Atc 'SHOW hba_file')
      if ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
        log "allowing the postgres user on 127.0.0.1 without a password (test machine)"
        sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
        runuser -u postgres -- psql -p "$PG_PORT" -Atc 'SELECT pg_reload_conf()' >/dev/null
      fi
    fi
    wait_for 30 PostgreSQL pg_ready
    pg_db
    return
  fi
  # No cluster at all: a private one with trust auth on loopback, owned by the postgres user.
  local data="$STATE/pg"
  mkdir -p "$STATE"; chmod 755 "$STATE"
  if [ ! -f "$data/PG_VERSION" ]; then
    install -d -o postgres -g postgres "$data"
    # UTF-8 whatever the environment's locale: names such as `Zürich` and JSON with \u escapes need it (a cluster
    # made without LANG would be SQL_ASCII).
    runuser -u postgres -- "$(pg_bindir)/initdb" -D "$data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  log "starting a private PostgreSQL on 127.0.0.1:$PG_PORT"
  runuser -u postgres -- "$(pg_bindir)/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c fsync=off -c synchronous_commit=off" start >/dev/null
  mark_started "pg-private $data"
  wait_for 30 PostgreSQL pg_ready
  pg_db
}

pg_db() {
  if [ "$(psql -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
    psql -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE $DB" 2>/dev/null || true
    log "created database $DB"
  fi
}

# ------------------------------------------------------------------------------------------------------ RabbitMQ
rmq_ready() { rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; }

rmq_up() {
  if ! port_open "$AMQP_PORT"; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    log "starting RabbitMQ on 127.0.0.1:$AMQP_PORT"
    # Everything on loopback: AMQP, the Erlang port mapper (epmd, 4369) and Erlang distribution (25672).
    if ! pgrep -x epmd >/dev/null; then
      ERL_EPMD_ADDRESS=127.0.0.1 epmd -daemon
      mark_started epmd
    fi
    ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$AMQP_PORT \
      RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000)) \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      rabbitmq-server -detached
    mark_started rabbitmq
    wait_for 90 RabbitMQ rmq_ready
  else
    log "RabbitMQ answers on 127.0.0.1:$AMQP_PORT"
  fi
  if command -v rabbitmqctl >/dev/null; then
    wait_for 60 "RabbitMQ management commands" rabbitmqctl -q list_vhosts
    if ! rabbitmqctl -q list_vhosts | grep -qx "$VHOST"; then
      rabbitmqctl -q add_vhost "$VHOST" >/dev/null
      log "created vhost $VHOST"
    fi
    rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
  fi
}

# ------------------------------------------------------------------------------------------------------ S3 (moto)
# ListBuckets: cheap whatever moto holds (its data dump grows with every stored object).
s3_ready() { command -v curl >/dev/null && curl -fs -m 5 -o /dev/null "http://127.0.0.1:$S3_PORT/"; }

# moto 5.2 answers CompleteMultipartUpload with the wrong XML root (aws-sdk-s3 refuses it); 5.1.22 is right.
MOTO_VERSION=5.1.22
# The WSGI server moto's S3 application runs in (scripts/s3-server.py says why not werkzeug's).
WAITRESS_VERSION=3.0.2
moto_version() { python3 -c 'import moto; print(moto.__version__)' 2>/dev/null; }
waitress_version() { python3 -c 'import importlib.metadata as m; print(m.version("waitress"))' 2>/dev/null; }
# What answers on the S3 port: scripts/s3-server.py names itself in the Server header.
s3_server() { curl -fs -m 5 -o /dev/null -D - "http://127.0.0.1:$S3_PORT/" | tr -d '\r' | awk -F': ' 'tolower($1)=="server" {print $2}'; }

pip_install() {
  command -v pip3 >/dev/null || command -v pip >/dev/null || apt_install python3-pip
  log "installing $1 from PyPI"
  "$(command -v pip3 || command -v pip)" install -q "$1" 2>/dev/null \
    || "$(command -v pip3 || command -v pip)" install -q --break-system-packages "$1"
  hash -r
}

s3_up() {
  local installed=0
  command -v curl >/dev/null || apt_install curl
  if [ "$(moto_version)" != "$MOTO_VERSION" ]; then
    pip_install "moto[server]==$MOTO_VERSION"
    installed=1
  fi
  if [ "$(waitress_version)" != "$WAITRESS_VERSION" ]; then
    pip_install "waitress==$WAITRESS_VERSION"
    installed=1
  fi
  # A server this script started with other versions, or another server (`moto_server`, or moto in werkzeug's
  # development server as this script ran it before), is restarted as moto's S3 alone in waitress.
  local pid; pid=$(cat "$STATE/moto.pid" 2>/dev/null || true)
  if s3_ready && [ -n "$pid" ] && { [ "$installed" = 1 ] || [ "$(s3_server)" != moto-waitress ]; }; then
    log "restarting moto as its S3 server alone in waitress, on moto $MOTO_VERSION"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do s3_ready || break; sleep 0.1; done
  fi
  if ! s3_ready; then
    mkdir -p "$STATE"
    log "starting moto (S3) on 127.0.0.1:$S3_PORT"
    nohup python3 "$(dirname "${BASH_SOURCE[0]}")/s3-server.py" 127.0.0.1 "$S3_PORT" >"$STATE/moto.log" 2>&1 &
    echo $! >"$STATE/moto.pid"
    mark_started moto
    wait_for 30 "moto S3 server" s3_ready
  else
    log "S3 (moto) answers on 127.0.0.1:$S3_PORT"
  fi
  # Creating an existing bucket is harmless on moto; the request carries no credentials it checks.
  curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$S3_PORT/$BUCKET" || die "could not create bucket $BUCKET"
}

# ---------------------------------------------------------------------------------------------- restarts (chaos)
# The chaos test restarts each service once, whoever started it. Both wait until the service answers again.
pg_restart() {
  local cluster; cluster=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3==p {print $1, $2; exit}')
  if [ -n "$cluster" ]; then
    read -r ver name <<<"$cluster"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" restart -m fast </dev/null >/dev/null
  else
    local data; data=$(psql -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc 'SHOW data_directory')
    runuser -u postgres -- "$(pg_bindir)/pg_ctl" -D "$data" -l "$data/server.log" -m fast -w restart </dev/null >/dev/null
  fi
  wait_for 60 PostgreSQL pg_ready
  log "PostgreSQL restarted"
}

rmq_restart() {
  # The broker application restarts inside its Erlang node: every connection drops, quorum queues recover from disk.
  # Bounded: a stop that hangs fails the caller (the chaos test) instead of holding it forever.
  timeout 120 rabbitmqctl -q stop_app </dev/null >/dev/null || die "rabbitmqctl stop_app did not finish in 120 s"
  timeout 120 rabbitmqctl -q start_app </dev/null >/dev/null || die "rabbitmqctl start_app did not finish in 120 s"
  wait_for 60 RabbitMQ port_open "$AMQP_PORT"
  log "RabbitMQ restarted"
}

# ----------------------------------------------------------------------------------------------------------- main
down() {
  [ -f "$STARTED" ] || { log "nothing was started by this script"; return; }
  local what a b
  while read -r what a b; do
    case "$what" in
      moto) [ -f "$STATE/moto.pid" ] && kill "$(cat "$STATE/moto.pid")" 2>/dev/null || true; rm -f "$STATE/moto.pid"; log "stopped moto" ;;
      rabbitmq) rabbitmqctl -q stop </dev/null >/dev/null 2>&1 || true; log "stopped RabbitMQ" ;;
      epmd) epmd -kill >/dev/null 2>&1 || true; log "stopped epmd" ;;
      pg-cluster) pg_ctlcluster --skip-systemctl-redirect "$a" "$b" stop </dev/null || true; log "stopped PostgreSQL $a/$b" ;;
      pg-private) runuser -u postgres -- "$(pg_bindir)/pg_ctl" -D "$a" -m fast stop >/dev/null || true; log "stopped private PostgreSQL" ;;
    esac
  done < <(tac "$STARTED")
  rm -f "$STARTED"
}

status() {
  pg_ready && log "PostgreSQL: up" || log "PostgreSQL: down"
  port_open "$AMQP_PORT" && log "RabbitMQ: up" || log "RabbitMQ: down"
  s3_ready && log "S3 (moto): up" || log "S3 (moto): down"
}

case "${1:-up}" in
  up) pg_up; rmq_up; s3_up; log "ready: postgres://postgres@127.0.0.1:$PG_PORT/$DB amqp://guest:guest@127.0.0.1:$AMQP_PORT/$VHOST http://127.0.0.1:$S3_PORT/$BUCKET" ;;
  down) down ;;
  status) status ;;
  restart-postgres) pg_restart ;;
  restart-rabbitmq) rmq_restart ;;
  *) die "usage: $0 up|down|status|restart-postgres|restart-rabbitmq" ;;
esac
