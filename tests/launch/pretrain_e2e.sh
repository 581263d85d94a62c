#!/usr/bin/env bash
# End to end under mpiexec -n 2 (expert parallel, ep_size 2): moe-prepare on Debian's fortunes ->
# moe-train 50 steps of configs/tiny.ini -> the loss fell -> moe-generate continues a prompt.
# Usage: pretrain_e2e.sh BIN_DIR SOURCE_DIR MPIEXEC...
set -euo pipefail
bin="$1" src="$2"; shift 2
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
corpus=${MOE_FORTUNES_DIR:-/usr/share/games/fortunes}  # where Debian's fortunes package puts it
[ -d "$corpus" ] || { echo "e2e: $corpus missing (launch/setup.sh installs Debian's fortunes)"; exit 1; }

"$bin/moe-prepare" --input "$corpus" --separator % --vocab_size 1024 --val_fraction 0.05 --out_dir "$tmp/data" --quiet
"$@" -n 2 "$bin/moe-train" --config "$src/configs/tiny.ini" --data.dir "$tmp/data" --model.vocab_size 1024 \
  --train.steps 50 --train.log_every 10 --train.eval_every 25 --train.out_dir "$tmp/run" 2>&1 | tee "$tmp/train.log"

# "done: 50 steps in S s; train ce A -> B; val ce C -> D; checkpoint ..."
read -r first last < <(sed -n 's/.*train ce \([0-9.]*\) -> \([0-9.]*\).*/\1 \2/p' "$tmp/train.log")
read -r val_first val_last < <(sed -n 's/.*val ce \([0-9.]*\) -> \([0-9.]*\).*/\1 \2/p' "$tmp/train.log")
echo "e2e: train ce $first -> $last, val ce $val_first -> $val_last"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.0) }' || { echo "e2e: the training loss did not fall"; exit 1; }
awk -v a="$val_first" -v b="$val_last" 'BEGIN { exit !(b < a - 1.0) }' || { echo "e2e: the validation loss did not fall"; exit 1; }
step=checkpoints/step_00000050
for f in metrics.jsonl config.ini checkpoints/latest $step/manifest.json $step/model-00000-of-00002.safetensors \
         $step/model-00001-of-00002.safetensors $step/optimizer-00000-of-00002.safetensors \
         $step/optimizer-00001-of-00002.safetensors $step/tokenizer.model; do
  [ -s "$tmp/run/$f" ] || { echo "e2e: $f missing"; exit 1; }
done
grep -q '"type":"expert_load"' "$tmp/run/metrics.jsonl" || { echo "e2e: no expert load in metrics"; exit 1; }

"$bin/moe-generate" --checkpoint "$tmp/run" --prompt "The" --max_new_tokens 30 --seed 3 > "$tmp/sample.txt"
cat "$tmp/sample.txt"
head -c 3 "$tmp/sample.txt" | grep -q "The" || { echo "e2e: the sample does not continue the prompt"; exit 1; }
[ "$(wc -c < "$tmp/sample.txt")" -gt 8 ] || { echo "e2e: the sample is empty"; exit 1; }
echo "e2e: passed"
