#!/usr/bin/env bash
# `make services-cluster`: a three-node RabbitMQ cluster on loopback, from the installed server (the node of
# `make services` keeps running beside it). Nodes gitfleet-1@localhost .. gitfleet-3@localhost listen for AMQP on
# GITFLEET_CLUSTER_PORTS (5681 5682 5683) and for Erlang distribution 20000 above those; their data lives under
# GITFLEET_CLUSTER_DIR (/var/tmp/gitfleet-cluster). Idempotent. Prints the nodes' AMQP URLs, comma separated: the
# value of GITFLEET_AMQP_URL for a fleet on the cluster.
#
#   scripts/rabbitmq-cluster.sh up          start the nodes that are not running and join them (default)
#   scripts/rabbitmq-cluster.sh down        stop every node
#   scripts/rabbitmq-cluster.sh stop N      stop node N (1 to 3): its connections drop, the others serve
#   scripts/rabbitmq-cluster.sh start N     start node N again: it rejoins the cluster
#   scripts/rabbitmq-cluster.sh urls        print the AMQP URLs
set -euo pipefail

read -r -a PORTS <<<"${GITFLEET_CLUSTER_PORTS:-5681 5682 5683}"
DIR=${GITFLEET_CLUSTER_DIR:-/var/tmp/gitfleet-cluster}
VHOST=${GITFLEET_VHOST:-gitfleet}

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
node() { echo "gitfleet-$1@localhost"; }
ctl() { local n=$1; shift; timeout 120 rabbitmqctl -q -n "$(node "$n")" "$@" </dev/null; }

wait_port() { # wait_port PORT SECONDS
  local deadline=$((SECONDS + $2))
  until port_open "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

start_node() {
  local n=$1 port=${PORTS[$(($1 - 1))]}
  port_open "$port" && return 0
  command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed: run make services first"
  local home="$DIR/n$n"
  mkdir -p "$home/mnesia" "$home/log"
  echo '[].' >"$DIR/enabled_plugins"
  # The server's own settings file (/etc/rabbitmq/rabbitmq-env.conf) names the default node: point past it.
  : >"$DIR/rabbitmq-env.conf"
  printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\n' "$port" >"$home/rabbitmq.conf"
  chown -R rabbitmq:rabbitmq "$DIR" 2>/dev/null || true
  RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
  RABBITMQ_NODENAME="$(node "$n")" \
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT="$port" \
  RABBITMQ_DIST_PORT=$((port + 20000)) \
  RABBITMQ_CONFIG_FILE="$home/rabbitmq.conf" \
  RABBITMQ_MNESIA_BASE="$home/mnesia" \
  RABBITMQ_LOG_BASE="$home/log" \
  RABBITMQ_PID_FILE="$home/pid" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
  ERL_EPMD_ADDRESS=127.0.0.1 \
  ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    rabbitmq-server -detached </dev/null >/dev/null 2>&1
  wait_port "$port" 90 || die "node $n did not open port $port in 90 s (logs in $home/log)"
  log "node $n ($(node "$n")) up on 127.0.0.1:$port"
}

stop_node() {
  local n=$1 port=${PORTS[$(($1 - 1))]}
  port_open "$port" || return 0
  ctl "$n" stop >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 60))
  while port_open "$port"; do
    [ $SECONDS -lt $deadline ] || die "node $n still listening 60 s after stop"
    sleep 0.5
  done
  log "node $n stopped"
}

urls() {
  local out=() p
  for p in "${PORTS[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$p/$VHOST"); done
  (IFS=,; echo "${out[*]}")
}

up() {
  for n in 1 2 3; do start_node "$n"; done
  for n in 2 3; do
    if ! ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(node "$n")\""; then
      ctl "$n" stop_app >/dev/null 2>&1
      ctl "$n" reset >/dev/null 2>&1
      ctl "$n" join_cluster "$(node 1)" >/dev/null 2>&1
      ctl "$n" start_app >/dev/null 2>&1
      log "node $n joined the cluster"
    fi
  done
  ctl 1 list_vhosts | grep -qx "$VHOST" || ctl 1 add_vhost "$VHOST" >/dev/null
  ctl 1 set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
  urls
}

case "${1:-up}" in
  up) up ;;
  down) for n in 3 2 1; do stop_node "$n"; done ;;
  stop) stop_node "${2:?node number}" ;;
  start) start_node "${2:?node number}" ;;
  urls) urls ;;
  *) die "usage: $0 up|down|stop N|start N|urls" ;;
esac
