#!/usr/bin/env python3
"""The report of a scaling sweep: bench/scaling_report.py RESULTS.jsonl [OUT_DIR]

Reads moe-bench-scaling's JSON lines and prints, per mode (weak, strong): the table of every
(world, ep) with step time, tokens/s, scaling efficiency against the smallest run (tokens/s per
rank over the smallest run's), the breakdown of the step and the load imbalance; then the
collectives alone; then the performance model (bench/perf_model.py) calibrated on these runs,
its prediction beside each measurement with the error. With matplotlib (launch/setup.sh --python)
it draws OUT_DIR/scaling_throughput.png (tokens/s and efficiency against ranks, a line per
ep_size) and OUT_DIR/scaling_breakdown.png (the stacked breakdown per configuration).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import perf_model  # noqa: E402

PARTS = ["dense_compute", "expert_compute", "all_to_all", "wait", "grad_allreduce", "optimizer", "weight_allgather"]


def load(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r.get("type") == "scaling"]
    if not rows:
        sys.exit(f"error: {path} has no moe-bench-scaling results")
    return rows


def efficiencies(rows):
    """tokens/s per rank over the smallest run's of the same mode."""
    out = {}
    for mode in sorted({r["mode"] for r in rows}):
        same = [r for r in rows if r["mode"] == mode]
        base = min(same, key=lambda r: (r["world"], r["ep"]))
        for r in same:
            out[id(r)] = r["tokens_per_s_per_rank"] / base["tokens_per_s_per_rank"]
    return out


def print_tables(rows, eff):
    for mode in sorted({r["mode"] for r in rows}):
        print(f"\n{mode} scaling ({rows[0]['config']}, {rows[0]['device']}, {rows[0]['backend']})")
        print(f"{'world':>5} {'ep':>3} {'tok/rank':>8} {'step ms':>8} {'min':>7} {'max':>7} {'tok/s':>9} "
              f"{'tok/s/rank':>10} {'eff':>6} | " + " ".join(f"{p[:8]:>8}" for p in PARTS) +
              f" | {'overlap':>7} {'imb exp':>7} {'imb rank':>8}")
        for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: (r["world"], r["ep"])):
            b = r["breakdown_ms"]
            print(f"{r['world']:5d} {r['ep']:3d} {r['tokens_per_rank']:8d} {r['step_ms']['median']:8.1f} "
                  f"{r['step_ms']['min']:7.1f} {r['step_ms']['max']:7.1f} {r['tokens_per_s']:9.0f} "
                  f"{r['tokens_per_s_per_rank']:10.0f} {100 * eff[id(r)]:5.1f}% | " +
                  " ".join(f"{b.get(p, 0.0):8.1f}" for p in PARTS) +
                  f" | {b['grad_allreduce_overlapped']:7.1f} {r['imbalance']['experts_max_over_mean']:7.2f} "
                  f"{r['imbalance']['ep_ranks_max_over_mean']:8.2f}")
    print("\ncollectives alone (nccl-tests style)")
    seen = set()
    for r in rows:
        for c in r["collectives"]:
            key = (c["op"], c["ranks"], c["bytes"])
            if key in seen:
                continue
            seen.add(key)
            print(f"  {c['op']:10s} {c['ranks']:3d} ranks {c['bytes']:11d} B {c['time_us']:10.1f} us "
                  f"algbw {c['algbw_gbs']:7.3f} GB/s busbw {c['busbw_gbs']:7.3f} GB/s #wrong {c['wrong']}")


def plot(rows, eff, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(no matplotlib: no plots; launch/setup.sh --python installs it)")
        return
    os.makedirs(out_dir, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in sorted({r["mode"] for r in rows}):
        for ep in sorted({r["ep"] for r in rows if r["mode"] == mode}):
            runs = sorted((r for r in rows if r["mode"] == mode and r["ep"] == ep), key=lambda r: r["world"])
            a.plot([r["world"] for r in runs], [r["tokens_per_s"] for r in runs], "o-", label=f"{mode}, ep {ep}")
            b.plot([r["world"] for r in runs], [100 * eff[id(r)] for r in runs], "o-", label=f"{mode}, ep {ep}")
    a.set(xlabel="ranks", ylabel="tokens/s", title="throughput")
    b.set(xlabel="ranks", ylabel="% of the smallest run's tokens/s per rank", title="scaling efficiency")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling_throughput.png"), dpi=110)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    runs = sorted(rows, key=lambda r: (r["mode"], r["world"], r["ep"]))
    labels = [f"{r['mode'][0]} n{r['world']} ep{r['ep']}" for r in runs]
    bottom = [0.0] * len(runs)
    for p in PARTS:
        values = [r["breakdown_ms"].get(p, 0.0) for r in runs]
        ax.bar(labels, values, bottom=bottom, label=p)
        bottom = [x + y for x, y in zip(bottom, values)]
    ax.plot(labels, [r["step_ms"]["median"] for r in runs], "k_", markersize=20, label="step (median)")
    ax.set(ylabel="ms per step", title="where the step goes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling_breakdown.png"), dpi=110)
    print(f"\nplots: {out_dir}/scaling_throughput.png, {out_dir}/scaling_breakdown.png")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        sys.exit(2)
    rows = load(argv[1])
    eff = efficiencies(rows)
    print_tables(rows, eff)
    print("\nperformance model (bench/perf_model.py), calibrated on these runs:")
    perf_model.print_calibration(rows)
    plot(rows, eff, argv[2] if len(argv) > 2 else os.path.dirname(os.path.abspath(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
