"""Prints bench/compare.sh's results as tables and ratios (stdlib only)."""
import json
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {}
    for r in rows:
        key = (r["label"], r["scenario"], r.get("pairs"), r.get("both_ways"))
        by[key] = r

    def get(label, scenario, pairs=None, both=None):
        for (l, s, p, b), r in by.items():
            if l == label and s == scenario and (pairs is None or p == pairs) and (both is None or b == both):
                return r
        return None

    labels = ["relay-local", "relay-cross", "haproxy", "direct", "relay-behind-haproxy", "relay-behind-haproxy-v2"]
    print("\n| contender | pairs/s | p50 ms | p99 ms | max ms | CPU s/1k pairs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for l in labels:
        r = get(l, "pair")
        if r:
            lat = r["latency_ms"]
            print(f"| {l} | {r['pairs_per_s']:.0f} | {lat['p50']:.3f} | {lat['p99']:.3f} | {lat['max']:.3f} | {r['relay_cpu_s_per_1000_pairs']:.3f} |")

    print("\n| contender | streams | GB/s | CPU s/GiB |")
    print("| --- | --- | ---: | ---: |")
    for l in labels:
        for r in [x for x in rows if x["label"] == l and x["scenario"] == "throughput"]:
            kind = "1 both ways" if r["both_ways"] else f"{r['pairs']} one way"
            print(f"| {l} | {kind} | {r['bytes_per_s'] / 1e9:.2f} | {r['relay_cpu_s_per_gib']:.3f} |")

    print("\n| contender | held | bytes per pending | bytes per idle session, at 0.5 s | at 11 s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for l in labels:
        for r in [x for x in rows if x["label"] == l and x["scenario"] == "hold"]:
            for row in r["rounds"]:
                pend = row.get("bytes_per_pending")
                pend = f"{pend:.0f}" if pend is not None else "-"
                idle = row.get("bytes_per_idle_session")
                idle = f"{idle:.0f}" if idle is not None else "-"
                print(f"| {l} | {row['count']} | {pend} | {row['bytes_per_session']:.0f} | {idle} |")
    # Beside the figure: the held forwarded sessions by path, read off the
    # nodes while held (a session on its Bridge holds more than one on a lane).
    for l in labels:
        for r in [x for x in rows if x["label"] == l and x["scenario"] == "hold"]:
            for row in r["rounds"]:
                if "held_on_lanes" in row:
                    print(f"\n{l}, {row['count']} held: {row['held_on_lanes']:.0f} forwarded on lanes, "
                          f"{row['held_on_bridge']:.0f} on the Bridge")

    def ratio(a, b):
        return a / b if a and b else float("nan")

    tl = [x for x in rows if x["label"] == "relay-local" and x["scenario"] == "throughput" and not x["both_ways"]]
    tc = [x for x in rows if x["label"] == "relay-cross" and x["scenario"] == "throughput" and not x["both_ways"]]
    th = [x for x in rows if x["label"] == "haproxy" and x["scenario"] == "throughput" and not x["both_ways"]]
    td = [x for x in rows if x["label"] == "direct" and x["scenario"] == "throughput" and not x["both_ways"]]
    pl, pc, ph = get("relay-local", "pair"), get("relay-cross", "pair"), get("haproxy", "pair")
    bps = lambda xs: xs[0]["bytes_per_s"] if xs else None
    cpu = lambda xs: xs[0]["relay_cpu_s_per_gib"] if xs else None
    print("\n| ratio | value |")
    print("| --- | ---: |")
    if tl:
        print(f"| relay-local / haproxy, throughput | {ratio(bps(tl), bps(th)):.2f} |")
        print(f"| relay-local / haproxy, CPU s per GiB | {ratio(cpu(tl), cpu(th)):.2f} |")
        print(f"| relay-cross / relay-local, throughput | {ratio(bps(tc), bps(tl)):.2f} |")
        print(f"| relay-local / direct, throughput | {ratio(bps(tl), bps(td)):.2f} |")
    if pl and ph:
        print(f"| relay-local / haproxy, pairs per second | {ratio(pl['pairs_per_s'], ph['pairs_per_s']):.2f} |")
        print(f"| relay-local / haproxy, p99 latency | {ratio(pl['latency_ms']['p99'], ph['latency_ms']['p99']):.2f} |")
    off = [x["pairs_per_s"] for x in rows if x["label"] == "relay-behind-haproxy" and x["scenario"] == "pair"]
    on = [x["pairs_per_s"] for x in rows if x["label"] == "relay-behind-haproxy-v2" and x["scenario"] == "pair"]
    if len(off) > 1 and len(on) > 1:
        med = lambda xs: sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1:len(xs) // 2 + 1]) / 2
        print(f"| behind HAProxy, PROXY v2 off, pairs per second, rounds | {', '.join(f'{v:.0f}' for v in off)} |")
        print(f"| behind HAProxy, PROXY v2 on, pairs per second, rounds | {', '.join(f'{v:.0f}' for v in on)} |")
        print(f"| behind HAProxy, PROXY v2 on / off, median pairs per second | {ratio(med(on), med(off)):.2f} |")
    pb, pv = get("relay-behind-haproxy", "pair"), get("relay-behind-haproxy-v2", "pair")
    if pb and pv and len(off) == 1:
        print(f"| behind HAProxy, PROXY v2 on / off, pairs per second | {ratio(pv['pairs_per_s'], pb['pairs_per_s']):.2f} |")
    if pc:
        print(f"| relay-cross p99 latency, ms | {pc['latency_ms']['p99']:.3f} |")

    # A forwarded session against a local one, beside the goals the
    # project set for the cross-node path (docs/PERFORMANCE.md).
    def held(label):
        r = next((x for x in rows if x["label"] == label and x["scenario"] == "hold"), None)
        return r["rounds"][0] if r else None
    goals = []
    if tl and tc:
        goals.append(("throughput, 4 streams one way", ratio(bps(tc), bps(tl)), ">= 0.85"))
        goals.append(("relay CPU per GiB, all nodes", ratio(cpu(tc), cpu(tl)), "<= 2.2"))
    if pl and pc:
        goals.append(("relay CPU per pair", ratio(pc["relay_cpu_s_per_1000_pairs"], pl["relay_cpu_s_per_1000_pairs"]), "<= 2.5"))
        goals.append(("pairing p99 at concurrency 32", ratio(pc["latency_ms"]["p99"], pl["latency_ms"]["p99"]), "<= 1.5"))
    if goals:
        print("\n| forwarded / local | ratio | goal |")
        print("| --- | ---: | --- |")
        for name, value, goal in goals:
            print(f"| {name} | {value:.2f} | {goal} |")
    hc = held("relay-cross")
    if hc:
        idle = hc.get("bytes_per_idle_session")
        idle = f", {idle:.0f} B at 11 s" if idle is not None else ""
        print(f"\nRSS per idle forwarded session, all nodes: {hc['bytes_per_session']:.0f} B at 0.5 s{idle} (goal <= 6,144 B)")


if __name__ == "__main__":
    main(sys.argv[1])
