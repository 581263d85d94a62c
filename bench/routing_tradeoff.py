#!/usr/bin/env python3
"""The load-balancing trade-off, measured: trains one model several times on the same data, seed
and tokens, changing only the balancing, and reports what each costs and buys.

    python3 bench/routing_tradeoff.py --config configs/routing-tradeoff.ini --out runs/tradeoff
    python3 bench/routing_tradeoff.py ... --only bias,seq-aux --scoring sigmoid --steps 200 --train.eval_every 50

Variants (model.* options; every other setting is the config's):
    none             no balancing
    seq-aux          sequence-level aux loss 0.01 (MiniMind2's default)
    global-aux       batch-level aux loss 0.01 over the global batch
    bias             auxiliary-loss-free balancing (bias_update_rate 1e-3, DeepSeek-V3), no aux loss
    bias+seq-aux     the bias plus a sequence aux loss of 1e-4 (DeepSeek-V3's recipe)
each with softmax and sigmoid scores (--scoring). Per run it prints and writes to OUT/tradeoff.md:
final validation cross entropy; MaxVio (max expert load / mean load - 1, worst layer) of the step's
global batch at the end and averaged over the last quarter of the steps, and over all the last
quarter's tokens counted together (MaxVio global: a batch's counts carry sampling noise, about
0.1 at this size for perfectly balanced routing; the 0.04 of arXiv 2408.15664 is the global
measure); the share of token
copies that a capacity factor of 1.25 would drop (from the logged routing, as moe-train's capacity
computes it: per step and layer, ceil(1.25 * copies / experts) per expert); the median step time
and its ratio to the unbalanced run's. With matplotlib it draws OUT/tradeoff.png: MaxVio and
validation cross entropy over the steps. A finished run is reused, not trained again (--retrain).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys

VARIANTS = {
    "none": ["--model.aux_loss_alpha", "0"],
    "seq-aux": ["--model.aux_loss_alpha", "0.01", "--model.seq_aux", "true"],
    "global-aux": ["--model.aux_loss_alpha", "0.01", "--model.seq_aux", "false", "--parallel.global_batch_aux", "true"],
    "bias": ["--model.aux_loss_alpha", "0", "--model.bias_update_rate", "1e-3"],
    "bias+seq-aux": ["--model.aux_loss_alpha", "1e-4", "--model.seq_aux", "true", "--model.bias_update_rate", "1e-3"],
}
CAPACITY_FACTOR = 1.25


def read_metrics(run_dir):
    records = {"train": [], "eval": [], "expert_load": []}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                records.setdefault(r["type"], []).append(r)
    return records


def dropped_share(load, experts):
    """Copies a capacity of ceil(1.25 * copies / E) per expert would drop, over all copies."""
    dropped = routed = 0.0
    for r in load:
        copies = r["routed"]
        capacity = math.ceil(CAPACITY_FACTOR * copies / experts)
        dropped += sum(max(0.0, round(f * copies) - capacity) for f in r["fraction"])
        routed += copies
    return dropped / max(routed, 1.0)


def global_max_violation(load, first_step):
    """MaxVio of the worst layer over every token from first_step on, counted together (the paper's
    MaxVio_global: no batch's sampling noise)."""
    totals = {}
    for r in load:
        if r["step"] >= first_step:
            row = totals.setdefault(r["layer"], [0.0] * len(r["fraction"]))
            for e, f in enumerate(r["fraction"]):
                row[e] += f * r["routed"]
    return max(max(row) / (sum(row) / len(row)) - 1 for row in totals.values())


def summarise(name, run_dir, experts):
    m = read_metrics(run_dir)
    train = m["train"]
    if not train or not m["eval"]:
        sys.exit(f"error: {run_dir}/metrics.jsonl lacks training or evaluation records")
    vio = [r["max_vio"] for r in train if "max_vio" in r]
    quarter = vio[-max(1, len(vio) // 4):]
    elapsed = [r["elapsed_s"] for r in train]
    steps = [r["step"] for r in train]
    step_times = [(elapsed[i] - elapsed[i - 1]) / (steps[i] - steps[i - 1]) for i in range(1, len(train))]
    return {
        "name": name,
        "val_ce": m["eval"][-1]["val_ce"],
        "max_vio_end": vio[-1],
        "max_vio_last_quarter": statistics.fmean(quarter),
        "max_vio_global_last_quarter": global_max_violation(m["expert_load"], train[-1]["step"] * 3 // 4 + 1),
        "dropped_at_1.25": dropped_share(m["expert_load"], experts),
        "step_ms": 1e3 * statistics.median(step_times),
        "curves": {"step": [r["step"] for r in train if "max_vio" in r], "max_vio": vio,
                   "eval_step": [r["step"] for r in m["eval"]], "val_ce": [r["val_ce"] for r in m["eval"]]},
    }


def config_value(config, section, key):
    inside = False
    with open(config) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("["):
                inside = line == f"[{section}]"
            elif inside and "=" in line and line.split("=", 1)[0].strip() == key:
                return line.split("=", 1)[1].strip()
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/routing-tradeoff.ini")
    p.add_argument("--out", default="runs/tradeoff")
    p.add_argument("--bin", default="build/bin", help="directory of moe-train")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--scoring", default="softmax,sigmoid")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    a, extra = p.parse_known_args()  # the rest: --group.key value options for every run
    variants = [v for v in a.only.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"error: unknown variant '{v}' (known: {', '.join(VARIANTS)})")
    scorings = [s for s in a.scoring.split(",") if s]
    for s in scorings:
        if s not in ("softmax", "sigmoid"):
            sys.exit(f"error: --scoring '{s}' is not softmax or sigmoid")
    train = os.path.join(a.bin, "moe-train")
    if not os.access(train, os.X_OK):
        sys.exit(f"error: {train} not found (build with launch/setup.sh)")
    experts = int(config_value(a.config, "model", "n_routed_experts") or 4)
    steps = a.steps or int(config_value(a.config, "train", "steps") or 0)
    os.makedirs(a.out, exist_ok=True)

    results = []
    for scoring in scorings:
        for v in variants:
            name = f"{scoring}/{v}"
            run_dir = os.path.join(a.out, scoring, v)
            done = os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and not a.retrain and any(
                r["step"] == steps for r in read_metrics(run_dir)["train"])
            if not done:
                cmd = [train, "--config", a.config, "--train.out_dir", run_dir, "--checkpoint.resume", "none",
                       "--checkpoint.save_final", "false", "--train.log_every", "1", "--model.scoring_func", scoring,
                       *VARIANTS[v], *extra]
                if a.steps:
                    cmd += ["--train.steps", str(a.steps)]
                print(f"[tradeoff] {name}: {' '.join(cmd)}", flush=True)
                with open(os.path.join(a.out, f"{scoring}-{v}.log"), "w") as log:
                    status = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
                if status != 0:
                    sys.exit(f"error: {name} failed (status {status}); see {a.out}/{scoring}-{v}.log")
            results.append(summarise(name, run_dir, experts))
            r = results[-1]
            print(f"[tradeoff] {name}: val ce {r['val_ce']:.4f}, MaxVio {r['max_vio_end']:.3f}", flush=True)

    lines = [f"Config `{a.config}`, {steps} steps, same data, seed and tokens in every run; "
             f"dropped: the share of token copies a capacity factor of {CAPACITY_FACTOR} would drop.", "",
             "| run | val CE | MaxVio batch, end | MaxVio batch, last quarter | MaxVio global, last quarter | "
             "dropped at 1.25 | step ms | step vs none |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        scoring = r["name"].split("/")[0]
        base = next((b for b in results if b["name"] == f"{scoring}/none"), None)
        ratio = f"{r['step_ms'] / base['step_ms']:.3f}" if base else "-"
        lines.append(f"| {r['name']} | {r['val_ce']:.4f} | {r['max_vio_end']:.3f} | {r['max_vio_last_quarter']:.3f} | "
                     f"{r['max_vio_global_last_quarter']:.3f} | {100 * r['dropped_at_1.25']:.2f}% | {r['step_ms']:.1f} | "
                     f"{ratio} |")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(a.out, "tradeoff.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(a.out, "tradeoff.json"), "w") as f:
        json.dump(results, f)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no plot; launch/setup.sh --python installs it)")
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for r in results:
        style = "-" if r["name"].startswith("softmax") else "--"
        c = r["curves"]
        window = max(1, len(c["max_vio"]) // 50)  # a running mean: single steps are noisy
        smooth = [statistics.fmean(c["max_vio"][max(0, i - window + 1):i + 1]) for i in range(len(c["max_vio"]))]
        top.plot(c["step"], smooth, style, lw=1, label=r["name"])
        bottom.plot(c["eval_step"], c["val_ce"], style, marker="o", ms=3, lw=1, label=r["name"])
    top.set_yscale("log")
    top.set_ylabel(f"MaxVio (running mean of {window} steps)")
    bottom.set_ylabel("validation cross entropy")
    bottom.set_xlabel("step")
    top.legend(fontsize=7, ncol=2)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "tradeoff.png"), dpi=120)
    print(f"wrote {a.out}/tradeoff.md, tradeoff.json, tradeoff.png")


if __name__ == "__main__":
    main()
