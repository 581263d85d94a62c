#!/usr/bin/env bash
# One node, N CPU ranks (the MPI backend, chosen automatically without GPUs). Each rank gets
# cores/N intra-op threads.
#   launch/run_cpu.sh N configs/tiny.ini [--group.key value ...]
# OpenMPI flags: --bind-to none lets each rank's threads use the cores it is given by
# OMP_NUM_THREADS instead of one core; --oversubscribe allows more ranks than cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mpi_env.sh"
[ $# -ge 2 ] || { echo "usage: $0 RANKS CONFIG.ini [--group.key value ...]" >&2; exit 2; }
ranks="$1" config="$2"; shift 2
threads=$(( $(nproc) / ranks )); [ "$threads" -ge 1 ] || threads=1
exec mpirun -np "$ranks" --bind-to none --oversubscribe -x OMP_NUM_THREADS="$threads" \
  "$bin/moe-train" --config "$config" "$@"
