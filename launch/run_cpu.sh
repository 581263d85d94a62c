#!/usr/bin/env bash
# One node, N CPU ranks (the MPI backend, chosen automatically without GPUs). Each rank gets
# cores/N intra-op threads.
#   launch/run_cpu.sh [--max-restarts R] N configs/tiny.ini [--group.key value ...]
# --max-restarts R: when a rank dies (killed, out of memory), relaunch from the last checkpoint, at
# most R times (launch/run_progress.sh says when not).
# OpenMPI flags: --bind-to none lets each rank's threads use the cores it is given by
# OMP_NUM_THREADS instead of one core; --oversubscribe allows more ranks than cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mpi_env.sh"
source "$root/launch/run_progress.sh"
parse_max_restarts "$@" || exit 2; shift "$args_shift"
[ $# -ge 2 ] || { echo "usage: $0 [--max-restarts R] RANKS CONFIG.ini [--group.key value ...]" >&2; exit 2; }
ranks="$1" config="$2"; shift 2
threads=$(( $(nproc) / ranks )); [ "$threads" -ge 1 ] || threads=1
launch_cmd=(mpirun -np "$ranks" --bind-to none --oversubscribe -x OMP_NUM_THREADS="$threads"
            "$bin/moe-train" --config "$config" "$@")
launch_run "$config" "$@"
