#!/usr/bin/env bash
# The test suite: set-up (idempotent), build, then every test under ctest (each has a TIMEOUT).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/launch/setup.sh" --python --slurm  # the interop test's Python side, the Slurm test's daemons
# nproc counts OMP_NUM_THREADS as the number of processors: read it before setting that.
jobs="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
ctest --test-dir "$root/build" --output-on-failure -j"$jobs" "$@"
