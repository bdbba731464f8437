#!/usr/bin/env python3
"""GPU time per kernel name from Nsight Compute raw CSV exports (one metric,
gpu__time_duration.sum): `kernel_times.py LONG.csv [SHORT.csv] [--steps N]`.

With two runs of the same workload that differ only in how many decode steps they take,
the per-name difference is what those extra steps cost (start-up, prefill and the first
decode steps cancel out); `--steps N` divides it into a per-step figure."""
import argparse
import csv
from collections import defaultdict

SCALE = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}


def totals(path):
    """{kernel name: (launches, µs)} from one `ncu --import R --csv --page raw` export."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    cols = rows[head]
    name_at, t_at = cols.index("Kernel Name"), cols.index("gpu__time_duration.sum")
    unit = SCALE.get(rows[head + 1][t_at], 1e-3)
    out = defaultdict(lambda: [0, 0.0])
    for r in rows[head + 2 :]:
        if len(r) <= t_at or not r[t_at].replace(".", "", 1).replace(",", "").isdigit():
            continue
        name = r[name_at].split("(")[0][:90]
        out[name][0] += 1
        out[name][1] += float(r[t_at].replace(",", "")) * unit
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("long", help="export of the longer run")
    ap.add_argument("short", nargs="?", help="export of the shorter run, subtracted")
    ap.add_argument("--steps", type=int, default=1, help="decode steps between the two runs")
    a = ap.parse_args()
    long, short, steps = totals(a.long), totals(a.short) if a.short else {}, a.steps
    diff = {k: (v[0] - short.get(k, [0, 0.0])[0], v[1] - short.get(k, [0, 0.0])[1]) for k, v in long.items()}
    total = sum(t for _, t in diff.values())
    print(f"{a.long}{' - ' + a.short if a.short else ''}: {total / steps:.1f} µs of kernels per step ({steps} steps)")
    print("| kernel | launches / step | µs / step | share |")
    print("|---|---|---|---|")
    for k, (n, t) in sorted(diff.items(), key=lambda kv: -kv[1][1])[:30]:
        print(f"| {k} | {n / steps:.1f} | {t / steps:.1f} | {100 * t / total:.1f}% |")


if __name__ == "__main__":
    main()
