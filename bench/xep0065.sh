#!/usr/bin/env bash
# XEP-0065 mode against the XMPP servers' own proxies, in one run on one
# machine, with the same real clients for every contender (slixmpp,
# tests/xmpp/transfer.py; the harness of tests/tests/xep0065.rs starts
# everything on loopback):
#
#   dtcp-relay (1 node), Prosody              the component of a Prosody
#   dtcp-relay (3 nodes, HAProxy), Prosody    Redis, HAProxy round robin, the
#                                             component on the third node
#   Prosody mod_proxy65                       Prosody 0.12's own proxy
#   dtcp-relay (1 node), ejabberd             the component of an ejabberd
#   ejabberd mod_proxy65                      ejabberd 23.01's own proxy
#
# Each gets:
#   - one transfer of $XEP0065_BENCH_BYTES (1 GiB) between two slixmpp
#     clients, timed from the activation's answer to the receiver's last
#     byte (the receiver writes the file and hashes it: SHA-256 checked);
#   - $XEP0065_BENCH_ACTIVATIONS (5000) activations over one XMPP session,
#     $XEP0065_BENCH_PARALLEL (16) at a time, each with two raw SOCKS5
#     connections (Target, then requester), the <activate> IQ through the
#     server, one byte from requester to Target and the requester's close.
#
# Prints a table; the raw JSON lines go to $OUT (default
# target/bench/xep0065.jsonl).
#
# Usage: bench/xep0065.sh [--quick]   (--quick: 256 MiB, 1000 activations)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--quick" ]; then
  export XEP0065_BENCH_BYTES=$((256 << 20)) XEP0065_BENCH_ACTIVATIONS=1000
fi
OUT=${OUT:-target/bench/xep0065.jsonl}
mkdir -p "$(dirname "$OUT")"

for tool in prosody ejabberdctl haproxy redis-server; do
  command -v "$tool" >/dev/null || { echo "bench/xep0065.sh needs $tool (scripts/test installs it)" >&2; exit 1; }
done
[ -x .cache/xmpp-venv/bin/python ] || { echo "bench/xep0065.sh needs .cache/xmpp-venv (scripts/test makes it)" >&2; exit 1; }

cargo build --release --bins --locked -q
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# The harness prints the nodes' logs on stderr; the measurements are the
# JSON lines on stdout (libtest may put its own words in front of the first).
cargo test --release --locked -q -p dtcp-tests --test xep0065 -- \
  --ignored --exact bench_xep0065 --nocapture 2>"$LOG" | grep -o '{.*"proxy".*}' > "$OUT" || {
  grep -v "^relay " "$LOG" | tail -n 40 >&2
  exit 1
}

python3 - "$OUT" <<'EOF'
import json, sys
transfer, activations = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    (transfer if "bytes" in r else activations)[r["proxy"]] = r
print(f"{'proxy':40} {'bytes':>11} {'seconds':>8} {'MB/s':>7} {'activations':>11} {'parallel':>8} {'per second':>10}")
for name, t in transfer.items():
    a = activations[name]
    print(f"{name:40} {t['bytes']:>11} {t['seconds']:>8.2f} {t['mb_per_s']:>7.0f} "
          f"{a['activations']:>11} {a['parallel']:>8} {a['per_second']:>10.0f}")
EOF
