"""Compares two sets of bench/all.sh's JSON lines (before and after a change, run in the same
sitting): for each scenario, the median sends/s, server CPU and p99 of each, and the change.

    python3 bench/compare.py before.jsonl after.jsonl
"""

import json
import statistics
import sys
from collections import OrderedDict

from medians import load


def groups(path):
    out = OrderedDict()
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if r["mode"].startswith("idle"):
            if r.get("server_rss_kib_before"):
                out.setdefault((r["setup"], "idle"), []).append(r)
            continue
        out.setdefault((r["setup"], load(r["mode"])), []).append(r)
    return out


def median(rows, get):
    return statistics.median(get(r) for r in rows)


def change(a, b):
    return f"{(b - a) / a * 100:+.1f}%" if a else "—"


def main(before_path, after_path):
    before, after = groups(before_path), groups(after_path)
    print("| setup | load | runs | sends/s before → after | server CPU µs/delivery before → after | p99 before → after |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, rows in before.items():
        if key not in after or key[1] == "idle":
            continue
        new = after[key]
        s0, s1 = median(rows, lambda r: r["sends_per_s"]), median(new, lambda r: r["sends_per_s"])
        c0 = median(rows, lambda r: r["cpu_us_per_delivery"])
        c1 = median(new, lambda r: r["cpu_us_per_delivery"])
        p0 = median(rows, lambda r: r["latency_us"]["p99"]) / 1000
        p1 = median(new, lambda r: r["latency_us"]["p99"]) / 1000
        print(f"| {key[0]} | {key[1]} | {len(rows)}, {len(new)} "
              f"| {s0:,.0f} → {s1:,.0f} ({change(s0, s1)}) "
              f"| {c0:.2f} → {c1:.2f} ({change(c0, c1)}) "
              f"| {p0:.2f} → {p1:.2f} ms |")
    for key, rows in before.items():
        if key[1] == "idle" and key in after:
            k0 = median(rows, lambda r: r["server_rss_kib_per_socket"])
            k1 = median(after[key], lambda r: r["server_rss_kib_per_socket"])
            print(f"\nIdle sockets ({key[0]}): {k0:.2f} → {k1:.2f} KiB per socket ({change(k0, k1)})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
