#!/usr/bin/env bash
# Several nodes from an OpenMPI hostfile ("node1 slots=8" per line), one rank per GPU.
#   launch/run_multinode.sh [--max-restarts R] HOSTFILE GPUS_PER_NODE configs/gpu-1024.ini --parallel.ep_size 8 [...]
# --max-restarts R: when a rank or a node fails, relaunch from the last checkpoint, at most R times
# (launch/run_progress.sh says when not).
# Keep --parallel.ep_size <= GPUS_PER_NODE so that expert all-to-alls stay inside a node (EP groups
# are consecutive ranks and -npernode fills nodes in order); experts are then replicated across
# nodes and their gradients all-reduced over the expert-data-parallel group.
# OpenMPI flags: -npernode places ranks node by node; -x exports the environment the ranks need on
# the other nodes (PATH, LD_LIBRARY_PATH for LibTorch/NCCL, NCCL settings); NCCL_SOCKET_IFNAME or
# NCCL_IB_HCA may need setting to the fabric's interfaces. The repository must be at the same path
# on every node (a shared file system).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/mpi_env.sh"
source "$root/launch/run_progress.sh"
parse_max_restarts "$@" || exit 2; shift "$args_shift"
[ $# -ge 3 ] || { echo "usage: $0 [--max-restarts R] HOSTFILE GPUS_PER_NODE CONFIG.ini [--group.key value ...]" >&2; exit 2; }
hostfile="$1" per_node="$2" config="$3"; shift 3
nodes=$(grep -cvE '^\s*(#|$)' "$hostfile")
launch_cmd=(mpirun -np $(( nodes * per_node )) --hostfile "$hostfile" -npernode "$per_node" --bind-to none
            -x PATH ${LD_LIBRARY_PATH:+-x LD_LIBRARY_PATH} -x NCCL_DEBUG="${NCCL_DEBUG:-WARN}" -x OMP_NUM_THREADS=4
            ${NCCL_SOCKET_IFNAME:+-x NCCL_SOCKET_IFNAME} ${NCCL_IB_HCA:+-x NCCL_IB_HCA}
            "$bin/moe-train" --config "$config" "$@")
launch_run "$config" "$@"
