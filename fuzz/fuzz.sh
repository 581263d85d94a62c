#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/: clang, address + undefined-behaviour sanitizers) in
# build-fuzz/ and runs each for SECONDS (default 60) from its seed corpus in fuzz/corpus/.
# Exits non-zero on a finding; the input that found it is left in build-fuzz/findings/.
#   fuzz/fuzz.sh [SECONDS] [TARGET...]      targets: safetensors manifest token_shard (default: all)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(safetensors manifest token_shard)
build="$root/build-fuzz"
command -v clang++ >/dev/null || { echo "[fuzz] clang++ missing (launch/setup.sh installs clang)"; exit 1; }
if [ ! -f "$build/build.ninja" ]; then
  CXX=clang++ cmake -S "$root/fuzz" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j"$(nproc)" >/dev/null
mkdir -p "$build/findings"
status=0
for target in "${targets[@]}"; do
  work="$build/corpus/$target"; mkdir -p "$work"  # new inputs go here; the seeds stay as committed
  echo "[fuzz] $target: ${seconds} s from $(ls "$root/fuzz/corpus/$target" | wc -l) seeds"
  if ! (cd "$build/findings" && "$build/${target}_fuzz" -max_total_time="$seconds" -print_final_stats=1 \
          -max_len=65536 -timeout=10 -rss_limit_mb=2048 "$work" "$root/fuzz/corpus/$target" 2> "$build/$target.log"); then
    status=1
    tail -40 "$build/$target.log"
    echo "[fuzz] $target: FINDING (input in $build/findings/)"
    continue
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added" "$build/$target.log" | tr '\n' ' ' | sed "s/^/[fuzz] $target: /"
  echo "; no finding"
done
exit $status
