#!/usr/bin/env bash
# The cluster's cost as it grows: for each node count N, one redis-server
# (or, with --redis-cluster, a three-master Redis Cluster) and N dtcp-relay
# nodes on loopback, then PAIRS pairs (4,000) at concurrency 32 spread the
# way a round-robin balancer spreads them: pair i's CREATE on node i mod N,
# its CONNECT on node (i+1) mod N (dtcp-bench --nodes). Fresh processes for
# every N, a warm-up of WARMUP pairs (every node's Bridge connections
# opened), Redis's statistics reset, then the measured run.
#
# One row per N: pairs/s, pairing p99, the CPU per pair of all the nodes
# together (from /proc), and Redis's CPU (INFO cpu), commands and command
# time (INFO commandstats) and output bytes (total_net_output_bytes) per
# pair; with --redis-cluster, the commands per pair on each master too.
# Raw JSON lines go to $OUT (default target/bench/nodes.jsonl).
#
# With CONC_PER_NODE=k the concurrency is k times N instead: the same load
# on each node whatever N. At a fixed 32, each of 12 nodes has under 3 pairs
# in flight against 16 at 2 nodes, and pays for many more wake-ups per pair
# (docs/PERFORMANCE.md, "Many nodes").
#
# Usage: bench/nodes.sh [--redis-cluster] [N ...]     (default N: 2 4 8 12 16)
#        PAIRS=1000 bench/nodes.sh 2 4                (a quicker look)
#        CONC_PER_NODE=16 bench/nodes.sh 2 12         (the same load per node)
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_CLUSTER=0
if [ "${1:-}" = "--redis-cluster" ]; then
  REDIS_CLUSTER=1
  shift
fi
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(2 4 8 12 16)
PAIRS=${PAIRS:-4000} CONC=${CONC:-32} WARMUP=${WARMUP:-500}
OUT=${OUT:-target/bench/nodes.jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null || ! command -v curl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server and curl (Debian packages)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server curl >/dev/null
  else
    echo "bench/nodes.sh needs redis-server, redis-cli and curl" >&2
    exit 1
  fi
fi
# Every node holds a client connection per pair side, the plane's
# connections and its Redis connections; the generator holds both sides.
ulimit -n "$(ulimit -Hn)"

cargo build --release --bins --locked -q
BIN=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A free port whose Redis Cluster bus port (+10000) is free and valid too.
free_redis_port() {
  python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    if port < 55000:
        try:
            b = socket.socket(); b.bind(("127.0.0.1", port + 10000)); print(port); break
        except OSError:
            pass'
}
wait_port() { # port log: waits for a listener on the port, or shows the log's end
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing on port $1; the end of $2:" >&2; tail -n 20 "$2" >&2; exit 1
}
metric() { # port sample: the sample's value on that metrics port, or nothing
  { curl -s --max-time 2 "http://127.0.0.1:$1/metrics" || true; } | awk -v s="$2" '$1 == s { print $2 }'
}

# Every client of the bench is 127.0.0.1: the per-address shares, which
# would take the generator for one abusive client, are lifted.
RELAY_ARGS=(--max-connections 1000000 --max-pending-per-ip 1000000
  --max-connections-per-ip 1000000 --max-sessions-per-ip 1000000
  --max-connection-rate-per-ip 0 --log-format json
  --cluster-secret bench-secret --forward-listen 127.0.0.1:0)

start_redis() { # sets REDIS (host:port list) and REDIS_URLS (node flags)
  REDIS=() REDIS_URLS=()
  local masters=1 extra=()
  if [ "$REDIS_CLUSTER" = 1 ]; then masters=3; fi
  for _ in $(seq "$masters"); do
    local port; port=$(free_redis_port)
    if [ "$REDIS_CLUSTER" = 1 ]; then
      extra=(--cluster-enabled yes --cluster-config-file "nodes-$port.conf" --dir "$WORK")
    fi
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no "${extra[@]}" \
      > "$WORK/redis-$port.log" 2>&1 &
    PIDS+=($!) ROUND+=($!)
    wait_port "$port" "$WORK/redis-$port.log"
    REDIS+=("127.0.0.1:$port") REDIS_URLS+=(--redis-url "redis://127.0.0.1:$port")
  done
  if [ "$REDIS_CLUSTER" = 1 ]; then
    redis-cli --cluster create "${REDIS[@]}" --cluster-replicas 0 --cluster-yes > "$WORK/cluster-create.log"
    for r in "${REDIS[@]}"; do
      for _ in $(seq 300); do
        redis-cli -h "${r%:*}" -p "${r#*:}" CLUSTER INFO | grep -q cluster_state:ok && continue 2
        sleep 0.1
      done
      echo "the Redis Cluster never said ok" >&2; exit 1
    done
  fi
}

for N in "${COUNTS[@]}"; do
  echo "== $N nodes" >&2
  ROUND=()
  start_redis
  NODES=() METRICS=() NODE_PIDS=()
  for i in $(seq "$N"); do
    P=$(free_port); M=$(free_port)
    "$BIN/dtcp-relay" --listen "127.0.0.1:$P" --metrics-listen "127.0.0.1:$M" \
      "${RELAY_ARGS[@]}" "${REDIS_URLS[@]}" > "$WORK/node-$N-$i.log" 2>&1 &
    PIDS+=($!) ROUND+=($!) NODE_PIDS+=($!)
    NODES+=("127.0.0.1:$P") METRICS+=("$M")
    wait_port "$P" "$WORK/node-$N-$i.log"
  done
  # Every node sees every other before a pair is made: each heartbeat seen.
  for m in "${METRICS[@]}"; do
    for _ in $(seq 300); do
      [ "$(metric "$m" dtcp_nodes_alive)" = "$N" ] && continue 2
      sleep 0.1
    done
    echo "a node on metrics port $m never saw $N nodes alive" >&2; exit 1
  done
  nodes=$(IFS=,; echo "${NODES[*]}") pids=$(IFS=,; echo "${NODE_PIDS[*]}") redis=$(IFS=,; echo "${REDIS[*]}")
  if [ -n "${CONC_PER_NODE:-}" ]; then CONC=$((CONC_PER_NODE * N)); fi
  "$BIN/dtcp-bench" --nodes "$nodes" pair --pairs "$WARMUP" --concurrency "$CONC" > /dev/null
  for r in "${REDIS[@]}"; do redis-cli -h "${r%:*}" -p "${r#*:}" CONFIG RESETSTAT > /dev/null; done
  "$BIN/dtcp-bench" --json --label "nodes-$N" --nodes "$nodes" --relay-pid "$pids" --redis "$redis" \
    pair --pairs "$PAIRS" --concurrency "$CONC" | tee -a "$OUT" > /dev/null
  kill "${ROUND[@]}"
  wait "${ROUND[@]}" 2>/dev/null || true
done

python3 bench/nodes.py "$OUT"
