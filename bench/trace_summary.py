#!/usr/bin/env python3
"""Tabulates a kineto trace written by moe-bench-model --profile: GPU kernel time by kernel name
(top N), how busy the GPU was over the profiled span, and the number of kernel launches.

  python3 bench/trace_summary.py TRACE.json [--top 25]
"""
import argparse, collections, json

ap = argparse.ArgumentParser()
ap.add_argument("trace")
ap.add_argument("--top", type=int, default=25)
a = ap.parse_args()
events = json.load(open(a.trace))["traceEvents"]
kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
if not kernels:
    raise SystemExit(f"{a.trace}: no CUDA kernels in the trace")
by_name = collections.defaultdict(lambda: [0.0, 0])
for k in kernels:
    by_name[k["name"]][0] += k["dur"]
    by_name[k["name"]][1] += 1
busy = sum(k["dur"] for k in kernels)
span = max(k["ts"] + k["dur"] for k in kernels) - min(k["ts"] for k in kernels)
print(f"{a.trace}: {len(kernels)} kernels, GPU busy {busy/1e3:.1f} ms of {span/1e3:.1f} ms ({100*busy/span:.0f}%)")
print(f"{'ms':>9} {'%':>5} {'calls':>6}  kernel")
for name, (dur, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: a.top]:
    print(f"{dur/1e3:9.2f} {100*dur/busy:5.1f} {n:6d}  {name[:110]}")
