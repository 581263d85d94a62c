#!/usr/bin/env bash
# The whole GPU check in one device call (the `device` tool's run, timeout_s 600), stages ordered by
# what the call must bring back, under 9.5 minutes in all; logs as $OUT/logs.tgz, the console as
# $OUT/console.log. Run from the project root on the GPU machine, carrying
# [".devbundle", ".deps/sentencepiece", ".deps/oniguruma"]:
#   bash bench/device_call.sh
# Prepared here first (docs/gpu-performance.md, "The call"): .devbundle from
# ../shared/gpu/make-bundle.sh (gpu-env.sh, the baseline in peers/), the Open MPI wheel in
# .devbundle/wheels, token shards of real text in .devbundle/data.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:?OUT: the folder whose files come back}"
source .devbundle/gpu-env.sh
export STAGE_TIMEOUT="${STAGE_TIMEOUT:-150}" MOE_FORTUNES_DIR="$root/.devbundle/fortunes"
peer=.devbundle/peers/torch_grouped_moe.py
# ~2 min build (16 cores) with the baseline compiling beside it, ~1 min graph, ~1 min baseline
# (caches warm), the graph without our fused kernels (~1 min), the kernels alone (~20 s), the graph
# with --recompute act (~1 min), the GPU tests (~2 min), the least memory (act,weights, expandable
# segments), eager with breakdown, whole blocks recomputed (~1 min),
# then the rest as time allows.
timeout 560 bench/gpu_check.sh "$out/l" report peer-during-build "$peer" build graph peer "$peer" graph-unfused kernels graph-act \
  test graph-lean bench graph-block train .devbundle/data profile proxies layer ckpt alltests 2>&1 | tee "$out/console.log"
(cd "$out" && tar czf logs.tgz l && rm -rf l)
