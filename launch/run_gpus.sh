#!/usr/bin/env bash
# One node, N GPUs, one rank per GPU (NCCL, chosen automatically with GPUs). moe-train binds each
# rank to GPU (node-local rank % GPUs) itself, from OpenMPI's node-local rank.
#   launch/run_gpus.sh [--max-restarts R] N configs/gpu-768.ini [--group.key value ...]
# --max-restarts R: when a rank dies (a GPU error, out of memory), relaunch from the last
# checkpoint, at most R times (launch/run_progress.sh says when not).
# OpenMPI flags: --bind-to none (ranks are bound to GPUs, not cores); -x exports the NCCL settings.
# To share one GPU among several ranks (NCCL refuses that), add --parallel.backend mpi.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mpi_env.sh"
source "$root/launch/run_progress.sh"
parse_max_restarts "$@" || exit 2; shift "$args_shift"
[ $# -ge 2 ] || { echo "usage: $0 [--max-restarts R] GPUS CONFIG.ini [--group.key value ...]" >&2; exit 2; }
gpus="$1" config="$2"; shift 2
launch_cmd=(mpirun -np "$gpus" --bind-to none --map-by slot -x NCCL_DEBUG="${NCCL_DEBUG:-WARN}" -x OMP_NUM_THREADS=4
            "$bin/moe-train" --config "$config" "$@")
launch_run "$config" "$@"
