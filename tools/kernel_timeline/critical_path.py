#!/usr/bin/env python3
"""What each kernel adds to a step's critical path, from kernel_timeline's CSV.

  critical_path.py trace.csv [--graphs-only] [--gap-us 20] [--last N] [--by-grid]

Kernels are taken in start order and cut into steps wherever the GPU idles longer than --gap-us
(the host's synchronisation between steps). For the last N steps (default 3) it prints, per
kernel name, the count per step and the mean of:
  - alone:    end - start, the kernel's own span (under programmatic dependent launch it includes
              the time its blocks waited for the kernel before);
  - adds:     end - the previous kernel's end, what the kernel adds to the step.
The step's span is the sum of `adds`. --by-grid keys the rows by kernel and grid, which tells
apart the launches of one kernel on different shapes (each GEMV of a layer).
"""
import argparse
import collections
import csv
import re


def short(name):
    name = re.sub(r"lightcore::kernels::detail::", "", name)
    name = re.sub(r"\(lightcore::kernels::moe_gemm_stage\)", "", name)
    return name if len(name) <= 90 else name[:87] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--graphs-only", action="store_true")
    ap.add_argument("--gap-us", type=float, default=20.0)
    ap.add_argument("--last", type=int, default=3)
    ap.add_argument("--by-grid", action="store_true")
    a = ap.parse_args()
    rows = []
    with open(a.csv) as f:
        for r in csv.DictReader(f):
            if a.graphs_only and r["graph_id"] == "0":
                continue
            rows.append((int(r["start_ns"]), int(r["end_ns"]), r["name"], r["grid"]))
    rows.sort()
    steps, cur, last_end = [], [], None
    for r in rows:
        if last_end is not None and r[0] - last_end > a.gap_us * 1e3:
            steps.append(cur)
            cur = []
        cur.append(r)
        last_end = r[1] if last_end is None else max(last_end, r[1])
    if cur:
        steps.append(cur)
    steps = steps[-a.last:]
    agg = collections.OrderedDict()
    spans = []
    for s in steps:
        prev_end = s[0][0]
        for start, end, name, grid in s:
            key = short(name) + (f"  [{grid}]" if a.by_grid else "")
            e = agg.setdefault(key, [0, 0.0, 0.0])
            e[0] += 1
            e[1] += (end - start) / 1e3
            e[2] += (max(end, prev_end) - prev_end) / 1e3
            prev_end = max(prev_end, end)
        spans.append((prev_end - s[0][0]) / 1e3)
    n = len(steps)
    print(f"{n} steps, spans (us): " + ", ".join(f"{x:.1f}" for x in spans))
    print(f"{'per step':>8} {'alone us':>9} {'adds us':>9} {'adds/call':>9}  kernel")
    for key, (count, alone, adds) in sorted(agg.items(), key=lambda kv: -kv[1][2]):
        c = count / n
        print(f"{c:8.1f} {alone / n:9.1f} {adds / n:9.1f} {adds / count:9.2f}  {key}")


if __name__ == "__main__":
    main()
