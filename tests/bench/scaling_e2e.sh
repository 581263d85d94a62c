#!/usr/bin/env bash
# moe-bench-scaling under mpiexec -n 1 and -n 2 (ep 1 and 2): the JSON lines hold every field, the
# collectives deliver every value (#wrong 0), the breakdown accounts for the step, and the
# performance model calibrates on them and predicts each; every layout also runs with the
# distributed optimiser (--shard_state both), whose state per rank is the formula's. Not a timing
# test: no figure is judged.
# Usage: scaling_e2e.sh BIN_DIR SOURCE_DIR MPIEXEC...
set -euo pipefail
bin="$1" src="$2"; shift 2
mpi=("$@")
tmp="$(mktemp -d)"; trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
fail() { echo "e2e: FAILED: $*"; exit 1; }
for n in 1 2; do
  "${mpi[@]}" -n "$n" "$bin/moe-bench-scaling" --config "$src/configs/tiny.ini" --ep_sizes 1 2 --steps 2 --warmup 1 --shard_state both \
    --tokens_per_rank 512 --collective_iters 2 --json "$tmp/results.jsonl" > "$tmp/out$n.log" 2>&1 \
    || { cat "$tmp/out$n.log"; fail "moe-bench-scaling -n $n"; }
done
cat "$tmp/out2.log"
grep -q "ep_size 2 skipped" "$tmp/out1.log" || fail "ep_size 2 on one rank was not skipped with a message"
python3 - "$tmp/results.jsonl" <<'PY' || fail "results"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for sharded in (False, True):
    layouts = sorted((r["world"], r["ep"]) for r in rows if r["shard_state"] == sharded)
    assert layouts == [(1, 1), (2, 1), (2, 2)], (sharded, layouts)
for r in rows:
    b = r["breakdown_ms"]
    parts = sum(b[k] for k in ("dense_compute", "expert_compute", "all_to_all", "wait", "grad_allreduce", "optimizer",
                               "weight_allgather"))
    s = r["state_bytes_per_rank"]
    # Replicated: exactly 16 B per trained parameter (+ the routing bias's weights). Sharded: the
    # moments per replica, rounded up per bucket (a few bytes).
    if r["shard_state"]:
        assert s["formula"] <= s["total"] <= s["formula"] * 1.001, (r["world"], r["ep"], s)
    else:
        assert s["total"] == s["formula"], s
    if r["shard_state"] and r["world"] > 1:
        assert s["moments"] < 0.75 * [q for q in rows if not q["shard_state"] and (q["world"], q["ep"]) ==
                                       (r["world"], r["ep"])][0]["state_bytes_per_rank"]["moments"], s
    # the parts are rank means of each step's pieces, the step the slowest rank's: close, not equal
    assert 0.5 * r["step_ms"]["median"] < parts < 1.5 * r["step_ms"]["max"], (r["world"], r["ep"], parts, r["step_ms"])
    assert r["step_ms"]["min"] <= r["step_ms"]["median"] <= r["step_ms"]["max"]
    assert abs(r["tokens_per_s"] - r["tokens_per_rank"] * r["world"] / (r["step_ms"]["median"] / 1e3)) < 1e-6 * r["tokens_per_s"]
    assert all(c["wrong"] == 0 for c in r["collectives"]), r["collectives"]
    assert (r["ep"] > 1) == any(c["op"] == "all_to_all" for c in r["collectives"])
    assert (r["ep"] > 1) == (b["all_to_all"] > 0), b
    assert r["imbalance"]["experts_max_over_mean"] >= 1
print("results: every field, #wrong 0, breakdowns within the step")
PY
python3 "$src/bench/perf_model.py" calibrate "$tmp/results.jsonl" | tee "$tmp/model.log"
grep -q "mean |error|" "$tmp/model.log" || fail "no calibration"
python3 "$src/bench/perf_model.py" h100 "$src/configs/minimind2-moe.ini" > "$tmp/h100.log" || fail "h100 table"
[ "$(grep -c '<-' "$tmp/h100.log")" = 4 ] || { cat "$tmp/h100.log"; fail "one recommended layout per GPU count"; }
python3 - "$src/bench" <<'PY' || fail "model arithmetic"
import sys
sys.path.insert(0, sys.argv[1])
import perf_model as pm
# Hand-computed: 2 layers, hidden 4, top-1 of 2 experts; 8 ranks in one node, ep 2, 10 tokens.
c = {"hidden": 4, "layers": 2, "experts": 2, "top_k": 1, "use_moe": True, "seq": 10, "tokens_per_rank": 10,
     "params_total": 1000, "params_active": 900, "flops_per_token": 6 * 900 + 12 * 2 * 4 * 10}
hw = {"ranks_per_node": 8, "compute_slots": 8, "activation_bytes": 4, "dense_flops_per_s": 1e9,
      "expert_flops_per_s": 1e9, "optimizer_s_per_param": 1e-9, "bucket_bytes": 1 << 30,
      "all_to_all": {"intra": {"bw": 1e9, "lat": 1e-6}, "inter": {"bw": 1e8, "lat": 1e-5}},
      "all_reduce": {"intra": {"bw": 2e9, "lat": 2e-6}, "inter": {"bw": 2e8, "lat": 2e-5}}}
p = pm.predict(c, hw, world=8, ep=2)
k = pm.counts(c)  # expert params: 100 unused of 2-1 per layer x 2 layers -> 50 per expert per layer
assert abs(k["expert_params"] - 200) < 1e-9 and abs(k["expert_flops"] - 6 * 2 * 1 * 50) < 1e-9, k
a2a = 4 * 2 * (10 * 1 * 4 * 4 * (1 / 2) / 1e9 + 1e-6)          # 4 per layer: bytes leaving / bw + lat
ring = lambda b, n: 2 * (n - 1) * 2e-6 + 2 * (n - 1) / n * b / 2e9
allreduce = ring(800 * 4, 8) + ring(100 * 4, 4)                 # dense over 8, experts/ep over edp 4
assert abs(p["parts"]["all_to_all"] - a2a) < 1e-15, (p["parts"], a2a)
assert abs(p["parts"]["grad_allreduce"] - allreduce) < 1e-15, (p["parts"], allreduce)
assert abs(p["parts"]["optimizer"] - 900e-9) < 1e-15
s = pm.predict(c, hw, world=8, ep=2, shard=True)  # the all-reduce's halves; 1/d of each parameter updated
assert abs(s["parts"]["grad_allreduce"] - allreduce / 2) < 1e-15 and abs(s["parts"]["weight_allgather"] - allreduce / 2) < 1e-15, s
assert abs(s["parts"]["optimizer"] - (800 / 8 + 100 / 4) * 1e-9) < 1e-15, s["parts"]
assert abs(pm.state_gb(k, 8, 2, shard=True) - (8 * 900 + 8 * (800 / 8 + 100 / 4)) / 1e9) < 1e-18
print("model arithmetic: as computed by hand")
PY
echo "e2e: PASSED"
