#!/usr/bin/env python3
"""A performance model of one training step of our MoE trainer (docs/performance-model.md).

  perf_model.py calibrate RESULTS.jsonl      fit this machine's rates to moe-bench-scaling's results,
                                              print the model's prediction beside every measurement
  perf_model.py h100 [CONFIG.ini ...]         predict 8-64 H100s (8 per node, NVLink inside,
                                              400 Gb/s per GPU across) for our configs, and
                                              recommend a layout for each

Step time = compute + all-to-all + count exchanges + exposed gradient all-reduce + optimizer:
  compute      dense FLOPs x tokens / dense rate + expert FLOPs x tokens x imbalance / expert rate,
               slowed by ranks / compute_slots where more ranks than slots share the hardware
  all-to-all   4 per MoE layer (dispatch, combine and their backward), each latency + the bytes
               that leave the rank (tokens x top-k x hidden x 4 x (ep-1)/ep) over the bus
               bandwidth inside the node, or across nodes for the part that leaves it
               Group-limited routing (model.n_group/topk_group) leaves these bytes as they are: our
               dispatch sends one row per (token, expert) copy, and the limit changes which ranks
               receive a token's copies, not how many copies leave (moe-bench-scaling --topk_group
               measures both); it would save bytes only with a dispatch that sends a token once per
               destination rank
  counts       one latency per MoE layer (the count exchange before each dispatch)
  all-reduce   ring: per bucket 2(n-1) latencies + 2(n-1)/n x bytes / bandwidth; dense gradients
               over all ranks, expert gradients over the edp group; with overlap the part that
               fits in the backward compute is hidden
  optimizer    seconds per parameter held (global norm, clipping, AdamW)
  sharded      (optim.shard_state) the all-reduce splits into its two halves: the reduce-scatter
               takes its place in the backward (hidden as far as it fits), the all-gather of the
               updated weights follows the update, exposed; the optimizer updates 1/d of each
               parameter (d its replicas: the world for dense, edp for experts); state per GPU
               8 + 8/d bytes per parameter held instead of 16 (4 + 8/d freeing gradients, ZeRO-2)
Only the standard library: runs anywhere Python does.
"""
import configparser
import json
import math
import sys

FLOAT_BYTES = 4  # fp32 activations on CPUs; on GPUs bf16 halves them (the hardware sets it)


def model_config(path):
    """Our ModelConfig's fields from an INI file (defaults: MiniMind2's), plus the batch."""
    ini = configparser.ConfigParser()
    ini.read(path)
    m = ini["model"] if ini.has_section("model") else {}
    get = lambda k, d: int(m.get(k, d))
    hidden = get("hidden_size", 512)
    inter = get("intermediate_size", 0) or 64 * math.ceil(int(hidden * 8 / 3) / 64)
    use_moe = str(m.get("use_moe", "false")).lower() == "true"
    c = {"name": path, "hidden": hidden, "layers": get("num_hidden_layers", 8), "heads": get("num_attention_heads", 8),
         "kv_heads": get("num_key_value_heads", 2), "vocab": get("vocab_size", 6400), "inter": inter,
         "use_moe": use_moe, "experts": get("n_routed_experts", 4) if use_moe else 0,
         "top_k": get("num_experts_per_tok", 2) if use_moe else 0, "shared": get("n_shared_experts", 1) if use_moe else 0}
    seq = int(ini["data"].get("seq_len", 256)) if ini.has_section("data") else 256
    batch = int(ini["train"].get("micro_batch", 8)) if ini.has_section("train") else 8
    c.update(seq=seq, tokens_per_rank=seq * batch)
    return c


def from_result(r):
    """The model config a moe-bench-scaling JSON line describes."""
    return {"name": r["config"], "hidden": r["hidden_size"], "layers": r["layers"], "experts": r["experts"],
            "top_k": r["top_k"], "use_moe": r["experts"] > 0, "seq": r["seq_len"],
            "params_total": r["params_total"], "params_active": r["params_active"],
            "flops_per_token": r["flops_per_token"], "tokens_per_rank": r["tokens_per_rank"]}


def counts(c):
    """Parameters and training FLOPs per token, split into routed-expert and dense (trainer/mfu.h)."""
    if "params_total" not in c:
        h, i, layers = c["hidden"], c["inter"], c["layers"]
        head_dim = h // c["heads"]
        attn = 2 * h * h + 2 * h * c["kv_heads"] * head_dim
        ffn = 3 * h * i
        per_layer = attn + 2 * h + (h * c["experts"] + (c["experts"] + c["shared"]) * ffn if c["use_moe"] else ffn)
        c["params_total"] = c["vocab"] * h + layers * per_layer + h
        c["params_active"] = c["params_total"] - (layers * (c["experts"] - c["top_k"]) * ffn if c["use_moe"] else 0)
        c["flops_per_token"] = 6 * c["params_active"] + 12 * layers * h * c["seq"]
    expert_params = c["params_total"] - c["params_active"] if c["use_moe"] else 0
    # routed experts a token uses: top_k of them per layer = (active - dense) parameters
    per_expert = expert_params / max(1, c["layers"] * (c["experts"] - c["top_k"])) if c["use_moe"] else 0
    expert_flops = 6 * c["layers"] * c["top_k"] * per_expert
    return {"expert_flops": expert_flops, "dense_flops": c["flops_per_token"] - expert_flops,
            "expert_params": per_expert * c["layers"] * c["experts"], "dense_params": c["params_total"] -
            per_expert * c["layers"] * c["experts"]}


def link(hw, op, crosses_nodes):
    return hw[op]["inter" if crosses_nodes else "intra"]


def predict(c, hw, world, ep, tokens=None, overlap=False, imbalance=1.0, shard=False):
    """Seconds per step and its parts for config c on `world` ranks with expert-parallel size ep
    (shard: the distributed optimiser)."""
    tokens = tokens or c["tokens_per_rank"]
    k = counts(c)
    per_node = hw["ranks_per_node"]
    slowdown = max(1.0, min(world, per_node) / hw["compute_slots"])
    dense = k["dense_flops"] * tokens / hw["dense_flops_per_s"] * slowdown
    expert = k["expert_flops"] * tokens * imbalance / hw["expert_flops_per_s"] * slowdown
    parts = {"dense_compute": dense, "expert_compute": expert, "all_to_all": 0.0, "wait": 0.0}
    if c["use_moe"] and ep > 1:
        sent = tokens * c["top_k"] * c["hidden"] * hw.get("activation_bytes", FLOAT_BYTES)
        inside = min(ep, per_node)
        f_intra, f_inter = (inside - 1) / ep, (ep - inside) / ep
        a2a_in, a2a_out = link(hw, "all_to_all", False), link(hw, "all_to_all", True)
        one = max(sent * f_intra / a2a_in["bw"], sent * f_inter / a2a_out["bw"] if f_inter else 0.0)
        one += (a2a_out if f_inter else a2a_in)["lat"]
        parts["all_to_all"] = 4 * c["layers"] * one
        parts["wait"] = c["layers"] * (a2a_out if f_inter else a2a_in)["lat"]
    bucket = hw.get("bucket_bytes", 32 << 20)

    def ring(bytes_, n, crosses):
        if n <= 1 or bytes_ <= 0:
            return 0.0
        l = link(hw, "all_reduce", crosses)
        buckets = math.ceil(bytes_ / bucket)
        return buckets * 2 * (n - 1) * l["lat"] + 2 * (n - 1) / n * bytes_ / l["bw"]

    edp = world // ep
    allreduce = ring(k["dense_params"] * 4, world, world > per_node) + \
        ring(k["expert_params"] / ep * 4, edp, world > per_node and ep < world)
    backward = 2 / 3 * (dense + expert)
    # Sharded: a ring all-reduce is a reduce-scatter then an all-gather, each half its time.
    in_backward = allreduce / 2 if shard else allreduce
    parts["grad_allreduce"] = max(0.0, in_backward - backward) if overlap else in_backward
    parts["weight_allgather"] = allreduce / 2 if shard else 0.0
    updated = k["dense_params"] / world + k["expert_params"] / ep / edp if shard else \
        k["dense_params"] + k["expert_params"] / ep
    parts["optimizer"] = updated * hw["optimizer_s_per_param"]
    step = sum(parts.values())
    return {"step_s": step, "tokens_per_s": tokens * world / step, "parts": parts, "allreduce_alone": allreduce}


def fit_line(points):
    """Least squares t = lat + x / bw over (x, t) points; lat >= 0."""
    if not points:
        return None
    if len(points) == 1 or len({x for x, _ in points}) == 1:
        x, t = points[0]
        return {"lat": 0.0, "bw": x / t}
    n = len(points)
    mx, mt = sum(x for x, _ in points) / n, sum(t for _, t in points) / n
    slope = sum((x - mx) * (t - mt) for x, t in points) / sum((x - mx) ** 2 for x, _ in points)
    lat = max(0.0, mt - slope * mx)
    if slope <= 0:
        return {"lat": lat, "bw": float("inf")}
    return {"lat": lat, "bw": 1 / slope}


def calibrate(results):
    """This machine's rates, from moe-bench-scaling's JSON lines (all on one node)."""
    replicated = [r for r in results if not r.get("shard_state")] or results  # the optimizer's full rate
    single = [r for r in replicated if r["world"] == 1] or sorted(replicated, key=lambda r: r["world"])[:1]
    base = single[0]
    c = from_result(base)
    k = counts(c)
    tokens = base["tokens_per_rank"]
    b = base["breakdown_ms"]
    hw = {"name": "this machine (calibrated)", "ranks_per_node": 1 << 30, "activation_bytes": FLOAT_BYTES,
          "dense_flops_per_s": k["dense_flops"] * tokens / (b["dense_compute"] / 1e3),
          "expert_flops_per_s": k["expert_flops"] * tokens / (b["expert_compute"] / 1e3) if k["expert_flops"] else 1.0,
          "optimizer_s_per_param": b["optimizer"] / 1e3 / (k["dense_params"] + k["expert_params"] / base["ep"])}
    # Compute slots: ranks that run at full speed together (cores for CPU ranks, GPUs). The
    # largest world whose per-rank compute stays within 25% of one rank's.
    slots = 1
    for r in sorted(results, key=lambda r: r["world"]):
        per_rank = (r["breakdown_ms"]["dense_compute"] + r["breakdown_ms"]["expert_compute"]) / r["tokens_per_rank"]
        ref = (b["dense_compute"] + b["expert_compute"]) / tokens
        if per_rank <= 1.25 * ref:
            slots = max(slots, r["world"])
    hw["compute_slots"] = slots
    for op, scale in (("all_to_all", lambda n: (n - 1) / n), ("all_reduce", lambda n: 2 * (n - 1) / n)):
        points = [(c2["bytes"] * scale(c2["ranks"]), c2["time_us"] / 1e6) for r in results for c2 in r["collectives"]
                  if c2["op"] == op and c2["ranks"] > 1]
        fit = fit_line(points) or {"lat": 0.0, "bw": float("inf")}
        hw[op] = {"intra": fit, "inter": fit}
    return hw


def print_calibration(results):
    hw = calibrate(results)
    print(f"calibrated on {len(results)} runs: dense {hw['dense_flops_per_s'] / 1e9:.2f} GFLOP/s, "
          f"expert {hw['expert_flops_per_s'] / 1e9:.2f} GFLOP/s per rank, {hw['compute_slots']} compute slot(s), "
          f"all-to-all {hw['all_to_all']['intra']['bw'] / 1e9:.2f} GB/s + {hw['all_to_all']['intra']['lat'] * 1e6:.0f} us, "
          f"all-reduce {hw['all_reduce']['intra']['bw'] / 1e9:.2f} GB/s + {hw['all_reduce']['intra']['lat'] * 1e6:.0f} us, "
          f"optimizer {hw['optimizer_s_per_param'] * 1e9:.2f} ns/parameter")
    print(f"{'world':>5} {'ep':>3} {'opt':>4} {'measured ms':>12} {'model ms':>9} {'error':>7} {'measured tok/s':>15} {'model tok/s':>12}")
    errors = []
    for r in sorted(results, key=lambda r: (r["world"], r["ep"], r.get("shard_state", False))):
        p = predict(from_result(r), hw, r["world"], r["ep"], r["tokens_per_rank"], r["overlap"],
                    r["imbalance"]["experts_max_over_mean"] if r["experts"] else 1.0, r.get("shard_state", False))
        measured = r["step_ms"]["median"]
        err = (p["step_s"] * 1e3 - measured) / measured
        errors.append(abs(err))
        print(f"{r['world']:5d} {r['ep']:3d} {'shd' if r.get('shard_state') else 'rep':>4} {measured:12.1f} {p['step_s'] * 1e3:9.1f} {100 * err:+6.1f}% "
              f"{r['tokens_per_s']:15.0f} {p['tokens_per_s']:12.0f}")
    print(f"mean |error| {100 * sum(errors) / len(errors):.1f}%, largest {100 * max(errors):.1f}%")
    return hw


# H100 SXM nodes: our measurements where we have them, vendor figures where we do not (stated).
H100 = {
    "name": "H100 SXM, 8 per node, NVLink 4 inside, 400 Gb/s InfiniBand per GPU across",
    "ranks_per_node": 8, "compute_slots": 8, "activation_bytes": 2,  # bf16 activations
    # 790 TFLOP/s bf16 measured (8192^3 matmul on our H100) x 20% (our end-to-end MFU on one H100,
    # configs b and c of docs/gpu-performance.md; it includes everything, so it is a floor)
    "dense_flops_per_s": 790e12 * 0.20, "expert_flops_per_s": 790e12 * 0.20,
    "optimizer_s_per_param": 1.2e-11,  # fused AdamW: ~32 bytes per parameter at ~2.7 TB/s
    # NCCL on NVLink 4 (~450 GB/s per direction): bus bandwidths as nccl-tests report them on
    # H100 nodes; across nodes 400 Gb/s = 50 GB/s per GPU at ~85%
    "all_to_all": {"intra": {"bw": 340e9, "lat": 15e-6}, "inter": {"bw": 42e9, "lat": 30e-6}},
    "all_reduce": {"intra": {"bw": 360e9, "lat": 10e-6}, "inter": {"bw": 45e9, "lat": 25e-6}},
}


def state_gb(k, world, ep, shard=False, free_grads=False):
    """GB of parameters, gradients and AdamW moments a GPU holds (fp32: 16 bytes per parameter;
    sharded 8 + 8/d, or 4 + 8/d freeing the full gradients, d = the parameter's replicas)."""
    held = k["dense_params"] + k["expert_params"] / ep
    if not shard:
        return 16 * held / 1e9
    share = k["dense_params"] / world + k["expert_params"] / ep / (world // ep)
    return ((4 * held + 8 * share) if free_grads else (8 * held + 8 * share)) / 1e9


def h100_table(paths):
    print(f"Predicted on {H100['name']}; overlapped gradient sync; each config's micro_batch x seq_len per GPU.")
    print("Assumptions: compute at 20% of 790 TFLOP/s (our measured MFU on one H100), all-to-all 340/42 GB/s,")
    print("all-reduce 360/45 GB/s (inside/across nodes) with 15/30 and 10/25 us latency, perfect routing balance.")
    print("eff: tokens/s per GPU against the best layout on 8 GPUs; state: GB of weights, gradients and AdamW per GPU.")
    print("sharded: optim.shard_state (its step ms; state with full gradients kept / freed, ZeRO-2); pays: the")
    print("sharded step within 2% of the replicated one while the state shrinks by at least a quarter.")
    for path in paths:
        c = model_config(path)
        k = counts(c)
        eps = [e for e in (1, 2, 4, 8, 16, 32, 64) if c["experts"] % e == 0] if c["use_moe"] else [1]
        print(f"\n{path}: {k['dense_params'] / 1e6:.1f}M dense + {k['expert_params'] / 1e6:.1f}M expert parameters, "
              f"{c['tokens_per_rank']} tokens per GPU")
        print(f"{'GPUs':>5} {'ep':>3} {'step ms':>8} {'tok/s':>12} {'tok/s/GPU':>10} {'eff':>6} {'compute':>8} "
              f"{'a2a':>6} {'gradAR':>7} {'state':>6} | {'sh ms':>7} {'sh state':>13} pays  best")
        base = None
        for world in (8, 16, 32, 64):
            rows = [(ep, predict(c, H100, world, ep, overlap=True)) for ep in eps if world % ep == 0]
            best = max(rows, key=lambda r: r[1]["tokens_per_s"])[0]
            if base is None:
                base = max(p["tokens_per_s"] for _, p in rows) / world
            for ep, p in rows:
                per_gpu = p["tokens_per_s"] / world
                parts = p["parts"]
                s = predict(c, H100, world, ep, overlap=True, shard=True)
                full, kept, freed = state_gb(k, world, ep), state_gb(k, world, ep, True), state_gb(k, world, ep, True, True)
                pays = s["step_s"] <= 1.02 * p["step_s"] and kept <= 0.75 * full
                print(f"{world:5d} {ep:3d} {p['step_s'] * 1e3:8.2f} {p['tokens_per_s']:12.0f} {per_gpu:10.0f} "
                      f"{100 * per_gpu / base:5.1f}% {1e3 * (parts['dense_compute'] + parts['expert_compute']):8.2f} "
                      f"{1e3 * parts['all_to_all']:6.2f} {1e3 * parts['grad_allreduce']:7.2f} {full:6.2f} | "
                      f"{s['step_s'] * 1e3:7.2f} {kept:6.2f}/{freed:6.2f} {'yes' if pays else 'no':>4}  "
                      f"{'<-' if ep == best else ''}")


def main(argv):
    if len(argv) >= 3 and argv[1] == "calibrate":
        with open(argv[2]) as f:
            results = [json.loads(line) for line in f if line.strip()]
        results = [r for r in results if r.get("type") == "scaling"]
        if not results:
            sys.exit(f"error: {argv[2]} has no moe-bench-scaling results")
        print_calibration(results)
    elif len(argv) >= 2 and argv[1] == "h100":
        h100_table(argv[2:] or ["configs/tiny.ini", "configs/minimind2-moe.ini", "configs/gpu-768.ini",
                                "configs/gpu-1024.ini"])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
