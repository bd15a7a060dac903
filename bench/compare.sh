#!/usr/bin/env bash
# The performance comparison, in one run on one machine, with the same
# generator (dtcp-bench) and the same scenarios for every contender:
#
#   relay-local   one dtcp-relay node, CREATE and CONNECT on it
#   relay-cross   three nodes and one Redis, CREATE on node A, CONNECT on node B
#   haproxy       HAProxy in TCP mode (both threads, option splice-auto) in
#                 front of the generator's sink: the industrial TCP proxy
#   direct        the generator talking to its own sink: the physical limit
#   relay-behind-haproxy, relay-behind-haproxy-v2
#                 one node behind HAProxy (TCP mode), without and with the
#                 PROXY protocol v2 (send-proxy-v2, --proxy-protocol): what
#                 reading the header costs a pairing, in the same run
#
# Prints each scenario's table, then the ratios (which stay meaningful on a
# noisy shared machine when absolute numbers do not). Raw JSON lines go to
# $OUT (default target/bench/results.jsonl).
#
# With DTCP_PLANE_TLS=1 in the environment, the three nodes' forwarding
# plane runs TLS (one self-signed certificate for all, made with openssl):
# their Bridges and lanes are TLS, what relay-cross then measures.
#
# The relay's own DTCP_* settings in the environment reach every node
# (each flag reads one): DTCP_NO_LANES=true puts forwarded sessions on
# their Bridge, DTCP_LANE_POOL=8 has each claim take a lane dialed ahead
# rather than dial its own (no pool by default).
#
# With --proxy N, only the two behind-HAProxy contenders run, N rounds each,
# alternating (off, on, on, off, ...) so that a machine's drift weighs on
# both alike; the summary gives each round and the medians.
#
# Usage: bench/compare.sh [--quick | --proxy N]
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${1:-}
PAIRS=2000 CONC=32 STREAMS=4 BYTES=1GiB HOLD=(2000 3000)
# Held sessions are read twice: half a second after they paired (the
# burst's freed heap still in the nodes), and once idle, eleven seconds
# later, when the nodes have handed freed memory back.
IDLE=11
if [ "$QUICK" = "--quick" ]; then
  PAIRS=500 BYTES=256MiB HOLD=(1000 2000)
fi
ROUNDS=0
if [ "$QUICK" = "--proxy" ]; then
  ROUNDS=${2:?--proxy takes a number of rounds}
fi
OUT=${OUT:-target/bench/results.jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null; }
if ! need haproxy || ! need redis-server; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "installing haproxy and redis-server (Debian packages)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy redis-server >/dev/null
  else
    echo "bench/compare.sh needs haproxy and redis-server" >&2
    exit 1
  fi
fi
# Held sessions take two descriptors each, on both sides (this machine's hard
# limit, 20,000, is what caps the held counts and HAProxy's maxconn; a node
# fits its connections to it, 6,581 here, so it holds at most 3,290 pairs;
# a cluster node keeps 1,024 more for lanes attaching: 6,240).
ulimit -n "$(ulimit -Hn)"

cargo build --release --bins --locked -q
BIN=target/release
BENCH="$BIN/dtcp-bench --json"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }

# Every client of the bench is 127.0.0.1: the per-address shares, which
# would take the generator for one abusive client, are lifted.
RELAY_ARGS=(--max-connections 1000000 --max-pending-per-ip 1000000
  --max-connections-per-ip 1000000 --max-sessions-per-ip 1000000
  --max-connection-rate-per-ip 0 --log-format json)
start_relay() { # name port [args...]; sets LAST (its pid) and LAST_METRICS
  local name=$1 port=$2; shift 2
  LAST_METRICS=127.0.0.1:$(free_port)
  "$BIN/dtcp-relay" --listen "127.0.0.1:$port" --metrics-listen "$LAST_METRICS" \
    "${RELAY_ARGS[@]}" "$@" > "$WORK/$name.log" 2>&1 &
  LAST=$!
  PIDS+=("$LAST")
  wait_port "$port"
}

run() { # label scenario args... ; the endpoint flags come from $ENDPOINT
  local label=$1; shift
  $BENCH --label "$label" "${ENDPOINT[@]}" "$@" | tee -a "$OUT" >/dev/null
}

scenarios() { # label pids
  local label=$1 pids=$2
  run "$label" --relay-pid "$pids" pair --pairs "$PAIRS" --concurrency "$CONC"
  run "$label" --relay-pid "$pids" throughput --pairs "$STREAMS" --bytes "$BYTES"
  run "$label" --relay-pid "$pids" throughput --pairs 1 --bytes "$BYTES" --both-ways
}

start_haproxy() { # name port "backend-addr [server options]"; sets LAST
  local name=$1 port=$2 server=$3
  cat > "$WORK/$name.cfg" <<CFG
global
  nbthread 2
  maxconn 7500
defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  server be $server
CFG
  haproxy -f "$WORK/$name.cfg" -db > "$WORK/$name-haproxy.log" 2>&1 &
  LAST=$!
  PIDS+=("$LAST")
  wait_port "$port"
}

behind_haproxy() { # label send-proxy-option [relay args...]
  local label=$1 send=$2; shift 2
  local rp fp
  rp=$(free_port); fp=$(free_port)
  start_relay "$label" "$rp" "$@"; local rpid=$LAST
  start_haproxy "$label" "$fp" "127.0.0.1:$rp $send"; local hpid=$LAST
  ENDPOINT=(--create-on "127.0.0.1:$fp")
  run "$label" --relay-pid "$rpid,$hpid" pair --pairs "$PAIRS" --concurrency "$CONC"
  kill "$hpid" "$rpid"
}
proxy_off() { behind_haproxy relay-behind-haproxy ""; }
proxy_on() { behind_haproxy relay-behind-haproxy-v2 send-proxy-v2 --proxy-protocol --proxy-protocol-from 127.0.0.1/32; }

if [ "$ROUNDS" -gt 0 ]; then
  echo "== relay behind haproxy, PROXY protocol v2 off and on, $ROUNDS rounds each" >&2
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then proxy_off; proxy_on; else proxy_on; proxy_off; fi
  done
  python3 bench/summary.py "$OUT"
  exit 0
fi

echo "== relay, one node" >&2
for k in "${HOLD[@]}"; do
  # A fresh process per count: freed memory would blur the next count.
  P=$(free_port); start_relay "local-hold-$k" "$P"; PID=$LAST
  ENDPOINT=(--create-on "127.0.0.1:$P")
  run relay-local --relay-pid "$PID" hold --count "$k" --idle "$IDLE"
  kill "$PID"
done
P=$(free_port); start_relay local "$P"; PID=$LAST
ENDPOINT=(--create-on "127.0.0.1:$P")
scenarios relay-local "$PID"
kill "$PID"

echo "== relay, three nodes and Redis" >&2
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no > "$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$RP"
CLUSTER=(--redis-url "redis://127.0.0.1:$RP" --cluster-secret bench-secret --forward-listen 127.0.0.1:0)
if [ "${DTCP_PLANE_TLS:-}" = 1 ]; then
  # The name every node checks (--forward-tls-server-name's default), as an
  # end-entity certificate: rustls takes no CA certificate for a peer's.
  cat > "$WORK/tls.cnf" <<CNF
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = dtcp-relay
[ext]
subjectAltName = DNS:dtcp-relay
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
CNF
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -config "$WORK/tls.cnf" -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
  CLUSTER+=(--forward-tls-cert "$WORK/tls.crt" --forward-tls-key "$WORK/tls.key")
  echo "   (forwarding plane in TLS)" >&2
fi
A=$(free_port); B=$(free_port); C=$(free_port)
start_relay a "$A" "${CLUSTER[@]}"; PA=$LAST; MA=$LAST_METRICS
start_relay b "$B" "${CLUSTER[@]}"; PB=$LAST; MB=$LAST_METRICS
start_relay c "$C" "${CLUSTER[@]}"; PC=$LAST; MC=$LAST_METRICS
ENDPOINT=(--create-on "127.0.0.1:$A" --connect-on "127.0.0.1:$B")
# Held first, on fresh nodes: after the throughput runs the nodes keep their
# freed buffers for reuse, and new sessions would fit in them unseen. The
# nodes' metrics, read while held, say how many crossed on lanes and how
# many fell back to their Bridge (the summary prints it under the figure).
run relay-cross --relay-pid "$PA,$PB,$PC" hold --count "${HOLD[0]}" --idle "$IDLE" --metrics "$MA,$MB,$MC"
scenarios relay-cross "$PA,$PB,$PC"

echo "== haproxy (tcp, nbthread 2, splice-auto)" >&2
HP=$(free_port); SINK=$(free_port)
start_haproxy haproxy "$HP" "127.0.0.1:$SINK"; HPID=$LAST
ENDPOINT=(--via "127.0.0.1:$HP" --sink "127.0.0.1:$SINK")
scenarios haproxy "$HPID"
run haproxy --relay-pid "$HPID" hold --count "${HOLD[0]}"

echo "== relay behind haproxy, without and with the PROXY protocol v2" >&2
proxy_off
proxy_on

echo "== direct" >&2
ENDPOINT=(--direct)
run direct throughput --pairs "$STREAMS" --bytes "$BYTES"
run direct throughput --pairs 1 --bytes "$BYTES" --both-ways

python3 bench/summary.py "$OUT"
