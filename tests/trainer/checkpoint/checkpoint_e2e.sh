#!/usr/bin/env bash
# Checkpoints of moe-train under mpiexec -n 2, end to end: a stop by SIGUSR1 to mpirun or SIGTERM
# to the ranks saves and exits 0; kill -9 of one or all ranks at every point of a save, and a
# failing save, leave `latest` valid and the previous checkpoint loadable; every such run, resumed
# with the same command, ends with checkpoint files byte-identical to an uninterrupted run's.
# Usage: checkpoint_e2e.sh BIN_DIR SOURCE_DIR MPIEXEC...
# MOE_E2E_TRAIN_ARGS: more moe-train options for every run (e.g. "--optim.shard_state true").
set -euo pipefail
bin="$1" src="$2"; shift 2
mpi=("$@")
read -r -a extra <<< "${MOE_E2E_TRAIN_ARGS:-}"
tmp="$(mktemp -d)"; trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
corpus=${MOE_FORTUNES_DIR:-/usr/share/games/fortunes}
[ -d "$corpus" ] || { echo "e2e: $corpus missing (launch/setup.sh installs Debian's fortunes)"; exit 1; }
fail() { echo "e2e: FAILED: $*"; exit 1; }

"$bin/moe-prepare" --input "$corpus" --separator % --vocab_size 512 --val_fraction 0.05 --out_dir "$tmp/data" --quiet
train() {  # train RUN [options...]: 16 steps, a checkpoint every 4
  local run="$1"; shift
  echo "e2e: train $run $*" >> "$tmp/$run.log"
  "${mpi[@]}" -n 2 "$bin/moe-train" --config "$src/configs/tiny.ini" --data.dir "$tmp/data" --model.vocab_size 512 \
    --train.steps 16 --train.log_every 1 --train.eval_every 0 --checkpoint.every 4 --train.out_dir "$tmp/$run" ${extra[@]+"${extra[@]}"} "$@" \
    >> "$tmp/$run.log" 2>&1
}
latest() { cat "$tmp/$1/checkpoints/latest"; }
same_as_reference() {  # every tensor file of the final checkpoint, and every logged loss and norm
  local a="$tmp/ref/checkpoints/step_00000016" b="$tmp/$1/checkpoints/step_00000016" f
  for f in model-00000-of-00002 model-00001-of-00002 optimizer-00000-of-00002 optimizer-00001-of-00002; do
    cmp -s "$a/$f.safetensors" "$b/$f.safetensors" || fail "$1: $f.safetensors differs from the uninterrupted run's"
  done
  python3 - "$tmp/ref/metrics.jsonl" "$tmp/$1/metrics.jsonl" <<'PY' || fail "$1: metrics differ"
import json, sys
def train(path):
    return [(r["step"], r["loss"], r["grad_norm"], r["tokens"]) for r in map(json.loads, open(path)) if r["type"] == "train"]
a, b = train(sys.argv[1]), train(sys.argv[2])
if a != b:
    print("reference:", a, "\nresumed:  ", b)
    sys.exit(1)
PY
  ! ls -d "$tmp/$1"/checkpoints/*.tmp >/dev/null 2>&1 || fail "$1: leftovers of an interrupted save remain"
}

train ref
[ "$(latest ref)" = step_00000016 ] || fail "reference: latest is $(latest ref)"
ls "$tmp/ref/checkpoints" | grep -qx step_00000004 && fail "reference: --checkpoint.keep 3 kept step 4"
python3 "$src/tools/inspect_checkpoint.py" "$tmp/ref" --verify > "$tmp/inspect.txt" || fail "inspect --verify: $(cat "$tmp/inspect.txt")"
echo "e2e: reference run done, its checkpoint verified by tools/inspect_checkpoint.py"

# Graceful stops: SIGUSR1 to mpirun (which forwards it), SIGTERM to the ranks (as a scheduler does).
wait_for_step() {
  for _ in $(seq 600); do
    grep -q "\"step\":$2," "$tmp/$1/metrics.jsonl" 2>/dev/null && return; sleep 0.05
  done
  fail "$1 never reached step $2"
}
# Only this test's processes are signalled (ctest runs other MPI jobs beside it).
launcher_of() { pgrep -P "$1" | head -1; }
train usr1 & pid=$!
wait_for_step usr1 2; kill -USR1 "$(launcher_of $pid)"
wait $pid || fail "usr1: a stopped run must exit 0 (see $tmp/usr1.log)"
grep -q "stopped by a signal after step" "$tmp/usr1.log" || fail "usr1: the run did not stop early"
train term & pid=$!
wait_for_step term 2; pkill -TERM -P "$(launcher_of $pid)" -x moe-train
wait $pid || fail "term: a stopped run must exit 0"
grep -q "stopped by a signal after step" "$tmp/term.log" || fail "term: the run did not stop early"
for run in usr1 term; do
  echo "e2e: $run stopped at $(latest $run)"
  train $run || fail "$run: resuming failed"
  grep -q "resumed from" "$tmp/$run.log" || fail "$run: did not resume"
  same_as_reference $run
done

# kill -9 during the save of step 8, at each point, of one rank or all; then a failing save.
for fault in before_write:1 before_write:all written:0 written:all manifest:0 renamed:0 latest:0 written:1:fail; do
  run="fault_${fault//:/_}"
  case "$fault" in *fail) spec="$fault:8" ;; *) spec="$fault:kill:8" ;; esac
  if MOE_CHECKPOINT_FAULT="$spec" train "$run"; then fail "$run: the run should have died"; fi
  want=step_00000004; [ "${fault%%:*}" = latest ] && want=step_00000008
  [ "$(latest $run)" = $want ] || fail "$run: latest is '$(latest $run)', expected $want"
  "$bin/moe-generate" --checkpoint "$tmp/$run" --prompt "A" --max_new_tokens 3 > /dev/null 2>&1 ||
    fail "$run: the checkpoint latest names does not load"
  case "$fault" in *fail) [ "$(grep -c "error\] saving checkpoint.*rank 1 of 2: injected failure" "$tmp/$run.log")" = 2 ] ||
                            fail "$run: the failed save must be an error on both ranks"
                          [ ! -e "$tmp/$run/checkpoints/step_00000008.tmp" ] ||
                            fail "$run: the failed save left its step_00000008.tmp behind" ;; esac
  train "$run" || fail "$run: resuming failed"
  same_as_reference "$run"
  echo "e2e: $fault: latest stayed valid ($want), resumed run identical"
done

# A checkpoint directory that cannot be created: an error on every rank, non-zero exit.
mkdir -p "$tmp/blocked" && touch "$tmp/blocked/checkpoints"
if train blocked; then fail "blocked: saving into an unwritable place must fail"; fi
[ "$(grep -c "error\] saving checkpoint" "$tmp/blocked.log")" = 2 ] || fail "blocked: expected the error on both ranks"
echo "e2e: passed"
