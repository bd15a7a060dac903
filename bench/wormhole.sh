#!/usr/bin/env bash
# dtcp's code mode next to magic-wormhole on this machine, in one run: one
# file of SIZE_MIB (1024) through a relay on loopback, each tool RUNS times
# (3), alternating. magic-wormhole is Debian's package (`wormhole`, installed
# with apt-get when missing), with its own mailbox server and transit relay
# from PyPI in a venv under .cache/ (magic-wormhole-mailbox-server,
# magic-wormhole-transit-relay). Both sides of wormhole run --no-listen so
# that, like dtcp here, every byte goes through the relay.
#
# One JSON line per run in $OUT (default target/bench/wormhole.jsonl): the
# wall time from the receiver's start to both ends' exit, MiB/s, and the
# CPU seconds (user + system) of the sender, the receiver and the relay.
# The receiver's files are compared with the source (SHA-256).
#
# Usage: bench/wormhole.sh            SIZE_MIB=256 RUNS=1 bench/wormhole.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024} RUNS=${RUNS:-3}
OUT=${OUT:-target/bench/wormhole.jsonl}
VENV=$PWD/.cache/wormhole-venv
DTCP=$PWD/target/release/dtcp RELAY=$PWD/target/release/dtcp-relay
[ -x "$DTCP" ] && [ -x "$RELAY" ] || { echo "cargo build --release --bins first" >&2; exit 1; }
command -v wormhole >/dev/null || apt-get install -y --no-install-recommends magic-wormhole >/dev/null
if [ ! -x "$VENV/bin/twist" ]; then
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q magic-wormhole-mailbox-server magic-wormhole-transit-relay
fi
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

# CPU seconds (user + system) a live process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }

# The servers keep their databases (relay.sqlite) in the current directory.
(cd "$WORK" && exec "$VENV/bin/twist" wormhole-mailbox --port tcp:24080:interface=127.0.0.1 >mailbox.log 2>&1) &
PIDS+=($!)
(cd "$WORK" && exec "$VENV/bin/twist" transitrelay --port tcp:24081:interface=127.0.0.1 >transit.log 2>&1) &
TRANSIT=$!; PIDS+=($TRANSIT)
"$RELAY" --listen 127.0.0.1:27787 --metrics-listen 127.0.0.1:29787 >"$WORK/relay.log" 2>&1 &
DRELAY=$!; PIDS+=($DRELAY)
sleep 2

head -c $((SIZE_MIB << 20)) /dev/urandom > "$WORK/file.bin"
SUM=$(sha256sum < "$WORK/file.bin" | cut -d' ' -f1)
WH=(wormhole --relay-url ws://127.0.0.1:24080/v1 --transit-helper tcp:127.0.0.1:24081)

# run TOOL N: one transfer; prints its JSON line.
run() {
  local tool=$1 n=$2 out="$WORK/out-$1-$2" relay_pid sender code start end before after
  mkdir -p "$out"
  : >"$WORK/send.out"
  if [ "$tool" = dtcp ]; then
    relay_pid=$DRELAY; before=$(cpu $relay_pid)
    /usr/bin/time -f "%U %S" -o "$WORK/send.time" \
      "$DTCP" send --relay 127.0.0.1:27787 --json "$WORK/file.bin" >"$WORK/send.out" 2>"$WORK/send.err" &
    sender=$!
    until grep -q '"code"' "$WORK/send.out"; do sleep 0.05; done
    code=$(sed -n 's/.*"code":"\([^"]*\)".*/\1/p' "$WORK/send.out" | head -1)
    start=$(date +%s.%N)
    (cd "$out" && echo "$code" | /usr/bin/time -f "%U %S" -o "$WORK/recv.time" \
      "$DTCP" recv --relay 127.0.0.1:27787 --code-file - 2>"$WORK/recv.err")
  else
    relay_pid=$TRANSIT; before=$(cpu $relay_pid)
    code="$n-crossover-clockwork"
    /usr/bin/time -f "%U %S" -o "$WORK/send.time" \
      "${WH[@]}" send --no-listen --hide-progress --code "$code" "$WORK/file.bin" >"$WORK/send.out" 2>"$WORK/send.err" &
    sender=$!
    # wormhole send hashes nothing up front, but wants its mailbox claimed first.
    until grep -q "wormhole receive" "$WORK/send.err"; do sleep 0.05; done
    start=$(date +%s.%N)
    (cd "$out" && /usr/bin/time -f "%U %S" -o "$WORK/recv.time" \
      "${WH[@]}" receive --no-listen --hide-progress --accept-file "$code" >/dev/null 2>"$WORK/recv.err")
  fi
  wait "$sender"
  end=$(date +%s.%N)
  after=$(cpu $relay_pid)
  [ "$(sha256sum < "$out/file.bin" | cut -d' ' -f1)" = "$SUM" ] || { echo "$tool: file differs" >&2; exit 1; }
  rm -rf "$out"
  awk -v tool="$tool" -v n="$n" -v s="$start" -v e="$end" -v mib="$SIZE_MIB" \
      -v sc="$(awk '{ print $1 + $2 }' "$WORK/send.time")" \
      -v rc="$(awk '{ print $1 + $2 }' "$WORK/recv.time")" \
      -v relay="$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')" \
      -v loadavg="$(cut -d' ' -f1-3 /proc/loadavg)" \
    'BEGIN { t = e - s; printf "{\"tool\":\"%s\",\"run\":%d,\"mib\":%d,\"seconds\":%.2f,\"mib_per_s\":%.1f,\"sender_cpu\":%.2f,\"receiver_cpu\":%.2f,\"relay_cpu\":%.2f,\"load\":\"%s\"}\n", tool, n, mib, t, mib / t, sc, rc, relay, loadavg }'
}

for n in $(seq 1 "$RUNS"); do
  for tool in dtcp wormhole; do
    run "$tool" "$n" | tee -a "$OUT"
  done
done
