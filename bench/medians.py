"""Prints the medians of bench/all.sh's JSON lines as the Markdown tables of docs/benchmarks.md."""

import json
import statistics
import sys
from collections import OrderedDict


def median(rows, get):
    values = [get(r) for r in rows]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ms(us):
    return "—" if us is None else f"{us / 1000:.2f} ms"


def load(mode):
    """loadgen's mode as the tables say it: "closed-loop w=4, receipts, devices" reads
    "closed loop, 4 unacked, with receipts, devices of one customer"."""
    mode, devices, rest = mode.partition(", devices")
    mode += rest
    mode, receipts, _ = (mode + ",").partition(", receipts")
    mode = mode.rstrip(",")
    if mode.startswith("closed-loop w="):
        mode = f"closed loop, {mode.removeprefix('closed-loop w=')} unacked"
    elif mode.startswith("rate ") and mode.endswith("/s per sender"):
        mode = f"{mode.removeprefix('rate ').removesuffix('/s per sender')} msg/s per sender"
    return (mode + (", with receipts" if receipts else "")
            + (", devices of one customer" if devices else ""))


def main(path):
    groups = OrderedDict()
    for line in open(path):
        line = line.strip()
        if line:
            r = json.loads(line)
            if r["mode"].startswith("idle") and not r.get("server_rss_kib_before"):
                continue  # the server was not found (it did not start): no reading
            groups.setdefault((r["setup"], r["mode"]), []).append(r)

    print("| setup | load | runs | sends/s | deliveries/s | p50 | p99 | p99.9 | lost / dup "
          "| server CPU µs/delivery | all-in CPU µs/delivery | stolen |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (setup, mode), rows in groups.items():
        if mode.startswith("idle"):
            continue
        lat = lambda q: (lambda r: r["latency_us"][q])
        print(f"| {setup} | {load(mode)} | {len(rows)} "
              f"| {median(rows, lambda r: r['sends_per_s']):,.0f} "
              f"| {median(rows, lambda r: r['deliveries_per_s']):,.0f} "
              f"| {ms(median(rows, lat('p50')))} | {ms(median(rows, lat('p99')))} "
              f"| {ms(median(rows, lat('p999')))} "
              f"| {max(r['undelivered_10s_after'] for r in rows)} / "
              f"{max(r['duplicated'] for r in rows)} "
              f"| {median(rows, lambda r: r['cpu_us_per_delivery']):.1f} "
              f"| {median(rows, lambda r: r['all_in_cpu_us_per_delivery']):.1f} "
              f"| {median(rows, lambda r: r.get('stolen_percent')) or 0:.0f}% |")
    print()
    print("| setup | idle sockets | runs | server RSS per socket | still open after hold |")
    print("| --- | --- | --- | --- | --- |")
    for (setup, mode), rows in groups.items():
        if not mode.startswith("idle"):
            continue
        people = "devices of 200 customers" if mode.endswith(", devices") else (
            "" if rows[0]["server"] == "ceiling" else "distinct people")
        print(f"| {setup} | {rows[0]['sockets']:,} {people} | {len(rows)} "
              f"| {median(rows, lambda r: r['server_rss_kib_per_socket']):.1f} KiB "
              f"| {min(r['still_open_after_s'][1] for r in rows):,} |")


if __name__ == "__main__":
    main(sys.argv[1])
