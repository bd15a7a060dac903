"""Prints bench/nodes.sh's results: one row per node count (stdlib only).

"load" is the machine's 1-minute load average at the end of the row's run
(two cores: above 2, something else was waiting for them too)."""
import json
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("\n| nodes | pairs/s | p99 ms | CPU per pair, all nodes | Redis CPU per pair"
          " | Redis commands per pair | Redis command time per pair | Redis output bytes per pair | load |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        redis = r.get("redis", {})
        nodes = r["label"].removeprefix("nodes-")
        print(f"| {nodes} | {r['pairs_per_s']:,.0f} | {r['latency_ms']['p99']:.2f}"
              f" | {r['relay_cpu_s_per_1000_pairs']:.2f} ms"
              f" | {redis.get('cpu_ms_per_pair', 0) * 1e3:.0f} us"
              f" | {redis.get('commands_per_pair', 0):.1f}"
              f" | {redis.get('command_usec_per_pair', 0):.0f} us"
              f" | {redis.get('output_bytes_per_pair', 0):,.0f}"
              f" | {r.get('load_average', ['-'])[0]} |")

    servers = [len(r.get("redis", {}).get("servers", [])) for r in rows]
    if max(servers, default=0) > 1:
        print("\nRedis commands per pair, on each master:\n")
        print("| nodes | " + " | ".join(f"master {k + 1}" for k in range(max(servers))) + " |")
        print("| ---: |" + " ---: |" * max(servers))
        for r in rows:
            per = [f"{s['commands_per_pair']:.1f}" for s in r["redis"]["servers"]]
            print(f"| {r['label'].removeprefix('nodes-')} | " + " | ".join(per) + " |")

    print("\nRedis commands per pair by command, with their time (a script's time includes"
          " the commands it calls, which are listed under their own names too):\n")
    for r in rows:
        redis = r.get("redis", {})
        by = redis.get("by_command_per_pair", {})
        usec = redis.get("by_command_usec_per_pair", {})
        listed = ", ".join(f"{name.upper()} {n:.2f} ({usec.get(name, 0):.1f} us)"
                           for name, n in sorted(by.items(), key=lambda kv: -kv[1]) if n >= 0.005)
        print(f"- {r['label'].removeprefix('nodes-')} nodes: {listed}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/bench/nodes.jsonl")
