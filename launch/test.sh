#!/usr/bin/env bash
# The test suite: set-up (idempotent), build, then every test under ctest (each has a TIMEOUT).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/launch/setup.sh" --python  # the interop test's Python side too
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
ctest --test-dir "$root/build" --output-on-failure -j"$(nproc)" "$@"
