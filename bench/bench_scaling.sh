#!/usr/bin/env bash
# A scaling sweep on this machine: moe-bench-scaling under mpirun for each world size, then the
# report (bench/scaling_report.py: table, efficiency, breakdown, plots, the performance model).
#   bench/bench_scaling.sh [--ranks "1 2 4"] [--modes "weak strong"] [--out runs/scaling] [moe-bench-scaling options...]
# Every world size runs every --ep_sizes value that divides it (default: 1 and the world).
# CPU ranks use one thread each; beyond the cores they share them (--oversubscribe).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks="1 2 4" modes="weak strong" out="$root/runs/scaling"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ranks) ranks="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
source "$root/launch/mpi_env.sh"
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
for mode in $modes; do
  for n in $ranks; do
    echo "[scaling] $mode scaling, $n rank(s)" >&2
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} mpirun -np "$n" --oversubscribe "$bin/moe-bench-scaling" --json "$results" \
      --mode "$mode" ${args[@]+"${args[@]}"} | grep -v "^{"
  done
done
"$root/tools/pytool" "$root/bench/scaling_report.py" "$results" "$out" | tee "$out/report.txt"
