#!/usr/bin/env bash
# The main job, from a fresh clone: set-up (idempotent) -> prepare a real-text corpus (Debian's
# fortunes, a 4096-piece BPE) into data/fortunes -> pretrain configs/tiny.ini on 2 CPU ranks with
# expert parallelism (ep_size 2), evaluating on the held-out split -> print a generated sample.
# Extra arguments go to moe-train (e.g. --train.steps 100). The run lands in runs/tiny/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/launch/setup.sh" --programs  # the tests and benchmarks are built by launch/test.sh
cd "$root"
if [ ! -f data/fortunes/prepare.json ]; then
  build/bin/moe-prepare --input /usr/share/games/fortunes --separator % --vocab_size 4096 --val_fraction 0.02 \
    --out_dir data/fortunes
fi
launch/run_cpu.sh 2 configs/tiny.ini "$@"
echo
echo "--- sample (build/bin/moe-generate --checkpoint runs/tiny --prompt 'Q: What') ---"
build/bin/moe-generate --checkpoint runs/tiny --prompt "Q: What" --max_new_tokens 120 --seed 7
