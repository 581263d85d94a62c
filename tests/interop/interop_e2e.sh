#!/usr/bin/env bash
# Export, import and tokenizers end to end, checked against transformers, torch and tokenizers
# (launch/setup.sh --python installs them): tiny models trained here (an MoE with a shared expert
# on 2 expert-parallel ranks, an MoE without one, a dense one) are exported, loaded by transformers
# and compared with our logits and greedy generation; exported to MiniMind's .pth and checked key by
# key and through MiniMind2's module structure (strict load, logits); imported back bit for bit;
# continued with --checkpoint.init_from; refusals checked.
# Usage: interop_e2e.sh BIN_DIR SOURCE_DIR TEST_BIN_DIR MPIEXEC...
set -euo pipefail
bin="$1" src="$2" tbin="$3"; shift 3
mpi=("$@")
tmp="$(mktemp -d)"; trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
corpus=${MOE_FORTUNES_DIR:-/usr/share/games/fortunes}
[ -d "$corpus" ] || { echo "e2e: $corpus missing (launch/setup.sh installs Debian's fortunes)"; exit 1; }
py() { "$src/tools/pytool" "$@"; }
check() { py "$src/tests/interop/check_interop.py" "$@"; }
fail() { echo "e2e: FAILED: $*"; exit 1; }
step() { echo "e2e: --- $*"; }
refused() {  # refused PATTERN COMMAND...: the command fails with a message matching PATTERN
  local pattern="$1"; shift
  if "$@" > "$tmp/refusal.log" 2>&1; then fail "not refused: $*"; fi
  grep -q -- "$pattern" "$tmp/refusal.log" || { cat "$tmp/refusal.log"; fail "no '$pattern' in the refusal of: $*"; }
  echo "e2e: refused as expected: $(grep -m1 -- "$pattern" "$tmp/refusal.log")"
}
# fp32 rounding: the two implementations sum in different orders (grouped vs per-expert matmuls,
# fused vs explicit attention); logits of these models are O(1-10), so 1e-4 is ~1e3 ulps of fp32
# and far below any real difference (one wrong weight moves logits by ~1e-2 or more).
tol=1e-4

"$bin/moe-prepare" --input "$corpus" --separator % --vocab_size 512 --val_fraction 0.05 --out_dir "$tmp/data" --quiet
train() {  # [STEPS=N] train RUN RANKS [options...]
  local run="$1" ranks="$2"; shift 2
  "${mpi[@]}" -n "$ranks" "$bin/moe-train" --config "$src/configs/tiny.ini" --data.dir "$tmp/data" \
    --model.vocab_size 0 --model.hidden_size 64 --data.seq_len 32 --train.micro_batch 4 --train.steps "${STEPS:-12}" \
    --train.log_every 6 --train.eval_every 0 --train.out_dir "$tmp/$run" "$@" > "$tmp/$run.log" 2>&1 \
    || { cat "$tmp/$run.log"; echo "e2e: training $run failed"; return 1; }
}

step "train: MoE with a shared expert on 2 ranks (ep 2), MoE without (top-1), dense, DeepSeek-V3 routing"
train moe 2 --parallel.ep_size 2
train moe_noshared 1 --parallel.ep_size 1 --model.n_shared_experts 0 --model.num_experts_per_tok 1
train dense 1 --parallel.ep_size 1 --model.use_moe false
# Sigmoid scores, a routing bias that has moved (rate 1e-2), 2 groups of which a token uses 1, scaled weights.
train moe_sigmoid 2 --parallel.ep_size 2 --model.scoring_func sigmoid --model.bias_update_rate 1e-2 \
  --model.n_group 2 --model.topk_group 1 --model.routed_scaling_factor 1.5 --model.router_z_loss_coef 1e-3
grep -q "vocab" "$tmp/moe/config.ini" && grep -q "^vocab_size = 512" "$tmp/moe/config.ini" \
  || fail "model.vocab_size 0 was not taken from the data (512)"

for run in moe moe_noshared dense moe_sigmoid; do
  step "export $run to Hugging Face; transformers against our outputs"
  "$tbin/reference_outputs" "$tmp/$run" "$tmp/$run.ref.safetensors"
  "$bin/moe-export" --checkpoint "$tmp/$run" --out_dir "$tmp/$run-hf"
  check hf "$tmp/$run-hf" "$tmp/$run.ref.safetensors" "$tol"
done
grep -q GraniteMoeShared "$tmp/moe-hf/config.json" && grep -q Qwen2Moe "$tmp/moe_noshared-hf/config.json" \
  && grep -q Llama "$tmp/dense-hf/config.json" && grep -q Glm4Moe "$tmp/moe_sigmoid-hf/config.json" \
  || fail "unexpected architectures"

step "sharded export (index file), bf16"
"$bin/moe-export" --checkpoint "$tmp/moe" --out_dir "$tmp/moe-hf-sharded" --max_shard_gb 0.0002 --no_tokenizer
[ -f "$tmp/moe-hf-sharded/model.safetensors.index.json" ] && ls "$tmp/moe-hf-sharded"/model-00002-of-*.safetensors \
  >/dev/null || fail "no shards"
check hf "$tmp/moe-hf-sharded" "$tmp/moe.ref.safetensors" "$tol"
"$bin/moe-export" --checkpoint "$tmp/moe" --out_dir "$tmp/moe-hf-bf16" --dtype bf16 --no_tokenizer
check hf "$tmp/moe-hf-bf16" "$tmp/moe.ref.safetensors" 0.5  # bf16 weights: ~3 significant digits

step "the exported tokenizer encodes and decodes as ours (the corpus text)"
cat "$corpus"/fortunes "$corpus"/literature "$corpus"/riddles > "$tmp/text"
py "$src/tools/hf_tokenizer.py" check "$tmp/data/tokenizer.model" "$tmp/moe-hf" "$tmp/text"

step "export to MiniMind's .pth (fp32 and MiniMind's fp16)"
"$bin/moe-export" --checkpoint "$tmp/moe" --out_dir "$tmp/moe-mm" --format minimind
check minimind "$tmp/moe-mm" "$tmp/moe.ref.safetensors" "$tol"
"$bin/moe-export" --checkpoint "$tmp/dense" --out_dir "$tmp/dense-mm" --format minimind --dtype fp16
check minimind "$tmp/dense-mm" "$tmp/dense.ref.safetensors" 0.05  # fp16 weights

step "import: Hugging Face and .pth back, bit for bit"
"$bin/moe-import" --from "$tmp/moe-hf" --out_dir "$tmp/moe-from-hf"
check same-parameters "$tmp/moe" "$tmp/moe-from-hf"
"$bin/moe-import" --from "$tmp/moe-hf-sharded" --out_dir "$tmp/moe-from-shards"
check same-parameters "$tmp/moe" "$tmp/moe-from-shards"
"$bin/moe-import" --from "$tmp/moe_noshared-hf" --out_dir "$tmp/noshared-from-hf"
check same-parameters "$tmp/moe_noshared" "$tmp/noshared-from-hf"
"$bin/moe-import" --from "$tmp/moe_sigmoid-hf" --out_dir "$tmp/sigmoid-from-hf"
check same-parameters "$tmp/moe_sigmoid" "$tmp/sigmoid-from-hf"
"$bin/moe-import" --from "$tmp/dense-hf" --out_dir "$tmp/dense-from-hf"
check same-parameters "$tmp/dense" "$tmp/dense-from-hf"
"$bin/moe-import" --from "$tmp/moe-mm/pretrain_64_moe.pth" --out_dir "$tmp/moe-from-mm"
check same-parameters "$tmp/moe" "$tmp/moe-from-mm"
"$bin/moe-generate" --checkpoint "$tmp/moe-from-hf" --prompt "The" --max_new_tokens 8 --temperature 0 \
  > "$tmp/gen.log" 2>&1 || { cat "$tmp/gen.log"; fail "moe-generate on an import"; }

step "a MiniMind2 state dict as its scripts save it (fp16 dict, shapes only) imports"
check minimind-state-dict "$tmp/minimind.pth"
"$bin/moe-import" --from "$tmp/minimind.pth" --out_dir "$tmp/from-minimind" --tokenizer "$tmp/data/tokenizer.model" \
  2>&1 | tee "$tmp/import.log"
grep -q "hidden_size 64, layers 2, heads 8/2, vocab 300, experts 4 routed (top 2) + 1 shared" "$tmp/import.log" \
  || fail "the configuration inferred from the state dict"

step "continued pretraining from an import, on another layout"
STEPS=2 train continued 2 --parallel.ep_size 2 --checkpoint.init_from "$tmp/moe-from-mm"
grep -q "parameters from .*moe-from-mm" "$tmp/continued.log" || fail "init_from not logged"
STEPS=1 refused "model.use_moe false (saved) vs true (now)" train bad_init 1 --parallel.ep_size 1 --checkpoint.init_from "$tmp/dense-from-hf"

step "refusals"
STEPS=1 train shared_unnormalised 1 --parallel.ep_size 1 --model.norm_topk_prob false
refused "norm_topk_prob" "$bin/moe-export" --checkpoint "$tmp/shared_unnormalised" --out_dir "$tmp/x" --no_tokenizer
refused "dtype" "$bin/moe-export" --checkpoint "$tmp/moe" --out_dir "$tmp/x" --dtype fp8
refused "scoring_func 'sigmoid'" "$bin/moe-export" --checkpoint "$tmp/moe_sigmoid" --out_dir "$tmp/x" --format minimind
refused "is not an export" "$bin/moe-export" --checkpoint "$tmp/moe" --out_dir "$tmp/moe"
python3 - "$tmp/moe-hf/config.json" "$tmp/untied/config.json" <<'PY'
import json, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(os.path.dirname(src), os.path.dirname(dst))
c = json.load(open(src)); c["tie_word_embeddings"] = False; json.dump(c, open(dst, "w"))
PY
refused "tie_word_embeddings" "$bin/moe-import" --from "$tmp/untied" --out_dir "$tmp/y"
check malicious-pth "$tmp/evil.pth" "$tmp/pwned"
refused "restricted unpickler" "$bin/moe-import" --from "$tmp/evil.pth" --out_dir "$tmp/z"
[ ! -e "$tmp/pwned" ] || fail "reading the .pth executed code"
py - "$tmp/minimind.pth" "$tmp/ordered.pth" <<'PY'
import collections, sys, torch
state = collections.OrderedDict(torch.load(sys.argv[1], weights_only=True))
state._metadata = collections.OrderedDict({"": {"version": 1}})  # as nn.Module.state_dict() returns it
torch.save(state, sys.argv[2])
PY
refused "torch.save(dict(state_dict), path)" "$bin/moe-import" --from "$tmp/ordered.pth" --out_dir "$tmp/z"

step "a Hugging Face byte-level BPE tokenizer (as MiniMind's) through moe-prepare, training and export"
python3 - "$corpus/fortunes" "$tmp/docs.jsonl" <<'PY'
import json, sys
docs = [d.strip("\n") for d in open(sys.argv[1], encoding="utf-8").read().split("\n%\n") if d.strip()]
with open(sys.argv[2], "w") as f:
    for d in docs[:400]:
        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
PY
check byte-bpe "$tmp/docs.jsonl" "$tmp/bpe"
"$bin/moe-prepare" --input "$tmp/docs.jsonl" --tokenizer "$tmp/bpe/tokenizer.json" --val_fraction 0 \
  --out_dir "$tmp/data-bpe" --quiet
check shard-ids "$tmp/data-bpe" "$tmp/docs.jsonl"
"${mpi[@]}" -n 1 "$bin/moe-train" --config "$src/configs/tiny.ini" --data.dir "$tmp/data-bpe" --model.vocab_size 0 \
  --model.hidden_size 64 --model.eos_token_id 2 --data.seq_len 32 --train.micro_batch 4 --train.steps 2 \
  --train.eval_every 0 --parallel.ep_size 1 --train.out_dir "$tmp/bpe-run" > "$tmp/bpe-run.log" 2>&1 \
  || { cat "$tmp/bpe-run.log"; fail "training on the byte-level BPE data"; }
"$bin/moe-generate" --checkpoint "$tmp/bpe-run" --prompt "Hello" --max_new_tokens 4 > "$tmp/bpe-gen.log" 2>&1 \
  || { cat "$tmp/bpe-gen.log"; fail "moe-generate with a tokenizer.json"; }
"$bin/moe-export" --checkpoint "$tmp/bpe-run" --out_dir "$tmp/bpe-hf"
py "$src/tools/hf_tokenizer.py" check "$tmp/data-bpe/tokenizer.json" "$tmp/bpe-hf" "$tmp/text"
echo "e2e: PASSED"
