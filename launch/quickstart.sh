#!/usr/bin/env bash
# The main job: set-up (idempotent), then a short pretraining run of the tiny MoE on real text
# (Debian's fortunes, bytes as tokens) that prints a falling loss and a generated sample.
# Extra arguments go to moe-demo (see build/bin/moe-demo --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/launch/setup.sh"
exec "$root/build/bin/moe-demo" "$@"
