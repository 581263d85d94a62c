#!/usr/bin/env python3
"""Plots a moe-train run's metrics.jsonl to PNG: losses and learning rate, expert load, and the load
violation (MaxVio) of each MoE layer over the steps.

    python3 tools/plot_metrics.py runs/tiny   # writes runs/tiny/loss.png, expert_load.png, max_vio.png
    python3 tools/plot_metrics.py runs/tiny/metrics.jsonl --out plots/

Needs matplotlib (Debian: apt install python3-matplotlib; or pip install matplotlib).
"""
import argparse
import json
import os
import sys


def read_records(path):
    records = {"train": [], "eval": [], "expert_load": [], "skipped": []}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}:{number}: not JSON ({e})")
            records.setdefault(record.get("type"), []).append(record)
    if not records["train"]:
        sys.exit(f"error: {path} has no training records (is it a moe-train metrics.jsonl?)")
    return records


def plot_losses(plt, records, out):
    train, evals = records["train"], records["eval"]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["ce"] for r in train], label="train cross entropy")
    ax.plot(steps, [r["aux"] for r in train], label="aux loss")
    if any("z" in r for r in train):
        ax.plot(steps, [r.get("z", 0.0) for r in train], label="router z-loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_ce"] for r in evals], "o-", label="validation cross entropy")
    for r in records["skipped"]:
        ax.axvline(r["step"], color="red", alpha=0.3)
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in train], color="gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_expert_load(plt, records, out):
    load = records["expert_load"]
    layers = sorted({r["layer"] for r in load})
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 2.2 * len(layers) + 1), sharex=True, squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        rows = [r for r in load if r["layer"] == layer]
        steps = [r["step"] for r in rows]
        fractions = list(zip(*[r["fraction"] for r in rows]))
        ax.stackplot(steps, fractions, labels=[f"expert {e}" for e in range(len(fractions))])
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"layer {layer}\nshare")
        twin = ax.twinx()
        twin.plot(steps, [r["imbalance"] for r in rows], color="black", lw=1, label="max/mean")
        twin.set_ylabel("max/mean")
        dropped = sum(r["dropped"] for r in rows)
        ax.set_title(f"layer {layer}: tokens per expert (dropped in all: {dropped:.0f})", fontsize=9)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_max_violation(plt, records, out):
    load = [r for r in records["expert_load"] if "max_vio" in r]
    fig, ax = plt.subplots(figsize=(9, 4))
    for layer in sorted({r["layer"] for r in load}):
        rows = [r for r in load if r["layer"] == layer]
        ax.plot([r["step"] for r in rows], [r["max_vio"] for r in rows], lw=1, label=f"layer {layer}")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylabel("MaxVio (max load / mean load - 1)")
    ax.set_xlabel("step")
    ax.legend(fontsize=7, ncol=4)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="a run directory or its metrics.jsonl")
    parser.add_argument("--out", help="output directory (default: the run directory)")
    args = parser.parse_args()
    path = os.path.join(args.metrics, "metrics.jsonl") if os.path.isdir(args.metrics) else args.metrics
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib is missing: apt install python3-matplotlib (or pip install matplotlib)")
    records = read_records(path)
    out_dir = args.out or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    written = [os.path.join(out_dir, "loss.png")]
    plot_losses(plt, records, written[0])
    if records["expert_load"]:
        written.append(os.path.join(out_dir, "expert_load.png"))
        plot_expert_load(plt, records, written[-1])
    if any("max_vio" in r for r in records["expert_load"]):
        written.append(os.path.join(out_dir, "max_vio.png"))
        plot_max_violation(plt, records, written[-1])
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
