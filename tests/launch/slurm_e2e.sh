#!/usr/bin/env bash
# Unattended long runs, end to end, on a real Slurm (a private one: tests/launch/private_slurm.sh)
# and under launch/run_cpu.sh --max-restarts. One uninterrupted run of 2 ranks is the reference;
# every interrupted run must end with byte-identical model and optimizer files.
# 1. sbatch launch/slurm.sbatch with a 1-minute time limit and SIGUSR1 30 s before it (Slurm's,
#    and the script's own clock, MOE_STOP_LEAD, whichever comes first): the job
#    saves and requeues itself at each time limit until the run is done. In its second start it is
#    preempted (`scontrol requeue`, Slurm's SIGTERM to every process) while its saves are slowed to
#    8 s (MOE_CHECKPOINT_FAULT=...:pause8, far beyond mpirun's 1-s kill): the checkpoint completes,
#    Slurm requeues the job, the run finishes. metrics.jsonl has every step exactly once.
# 2. launch/run_cpu.sh --max-restarts 2: one rank killed with SIGKILL -> relaunched, finishes.
#    A save that fails at the same step every time is retried once, not again; a bad option is not
#    retried.
# A requeued job waits about two minutes (Slurm's own delay) before it may start again; the test
# lets it start at once (scontrol update StartTime=now) once the previous start has ended.
# Usage: slurm_e2e.sh BIN_DIR SOURCE_DIR MPIEXEC...
set -euo pipefail
bin="$1" src="$2"; shift 2
mpi=("$@")
tmp="$(mktemp -d)"
source "$src/tests/launch/private_slurm.sh"
cleanup() {
  scancel --full --signal=KILL --user=root > /dev/null 2>&1 || true
  pkill -KILL -f "moe-train.*$tmp/" 2>/dev/null || true
  slurm_stop
  [ -n "${KEEP:-}" ] && echo "slurm_e2e: kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "slurm_e2e: FAILED: $*"
  for f in "$tmp"/*.out "$tmp"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  echo "--- Slurm's view"; scontrol show job 2>&1 | head -n 30; grep -v "debug" "$tmp/slurm/slurmctld.log" 2>/dev/null | tail -n 30
  exit 1
}
say() { echo "slurm_e2e: $*"; }
source "$src/launch/run_progress.sh"  # checkpoint_step, logged_step

slurm_start "$tmp/slurm" || fail "the private Slurm did not start (the line above says why)"
say "private Slurm up ($SLURM_CONF)"

corpus=${MOE_FORTUNES_DIR:-/usr/share/games/fortunes}
"$bin/moe-prepare" --input "$corpus" --separator % --vocab_size 1024 --val_fraction 0.05 --out_dir "$tmp/data" --quiet
steps=400
run_args=(--data.dir "$tmp/data" --model.vocab_size 1024 --train.steps $steps --train.log_every 1 --train.eval_every 200)
far_apart=(--checkpoint.every 100000)  # periodic checkpoints that never come: only stops save

"${mpi[@]}" -n 2 "$bin/moe-train" --config "$src/configs/tiny.ini" "${run_args[@]}" "${far_apart[@]}" --train.out_dir "$tmp/ref" \
  > "$tmp/ref.log" 2>&1 &
ref_pid=$!

same_as_reference() {  # RUN_DIR
  local final="checkpoints/step_$(printf %08d $steps)" f
  [ "$(checkpoint_step "$1")" = "$steps" ] || fail "$1: latest is not step $steps"
  for f in model-00000-of-00002 model-00001-of-00002 optimizer-00000-of-00002 optimizer-00001-of-00002; do
    cmp -s "$tmp/ref/$final/$f.safetensors" "$1/$final/$f.safetensors" || fail "$1: $f differs from the uninterrupted run's"
  done
}

# 1. Slurm: time limits, then a preemption during a slow save.
cd "$src"
job=$(sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 --time=1 \
        --signal=B:USR1@30 --output="$tmp/slurm.out" --export=ALL,MOE_STOP_LEAD=30,MOE_CHECKPOINT_FAULT=written:all:pause8 \
        launch/slurm.sbatch configs/tiny.ini "${run_args[@]}" "${far_apart[@]}" --train.out_dir "$tmp/slurm-run") ||
  fail "sbatch refused the job"
cd - > /dev/null
say "submitted job $job"
preempted=0 deadline=$(( SECONDS + 900 ))
while true; do
  state="$(job_state "$job")"
  case "$state" in
    COMPLETED) break ;;
    FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) fail "job $job ended $state" ;;
    PENDING) release_requeued "$job" ;;
  esac
  restarts="$(scontrol show job "$job" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')"
  # Preempt once, in the second start, when it has trained a few steps past its checkpoint.
  if [ "$preempted" = 0 ] && [ "$state" = RUNNING ] && [ "${restarts:-0}" = 1 ] &&
     [ "$(logged_step "$tmp/slurm-run")" -ge $(( $(checkpoint_step "$tmp/slurm-run") + 5 )) ]; then
    scontrol requeue "$job" || fail "scontrol requeue $job"
    preempted=1
    say "preempted job $job (scontrol requeue) at step $(logged_step "$tmp/slurm-run")"
  fi
  [ "$SECONDS" -lt "$deadline" ] || fail "job $job did not finish in 900 s (state $state)"
  sleep 1
done
self_requeues=$(grep -c "requeueing job $job" "$tmp/slurm.out" || true)
early=$(grep -c "early, left to this script's clock" "$tmp/slurm.out" || true)
say "job $job completed: $self_requeues requeues of its own, preempted $preempted time(s), $early early Slurm signal(s) left to the clock"
[ "$self_requeues" -ge 1 ] || fail "the job never requeued itself at a time limit"
[ "$preempted" = 1 ] || fail "the job was never preempted (it finished in its first start)"
grep -q "stopped by Slurm at checkpoint step" "$tmp/slurm.out" || fail "the preempted start did not save and stop"
grep -q "MOE_CHECKPOINT_FAULT: pause8" "$tmp/slurm.out" || fail "the saves were not slowed down"
grep -q "the run is complete" "$tmp/slurm.out" || fail "the last start did not report the run complete"
[ "$(grep -c "LD_LIBRARY_PATH" "$tmp/slurm.out")" = 0 ] || fail "the job warns about LD_LIBRARY_PATH"
wait "$ref_pid" || fail "the reference run failed: $(tail -n 5 "$tmp/ref.log")"
same_as_reference "$tmp/slurm-run"
python3 - "$tmp/slurm-run/metrics.jsonl" $steps <<'PY' || fail "metrics.jsonl"
import collections, json, sys
steps = collections.Counter(json.loads(l)["step"] for l in open(sys.argv[1]) if '"type":"train"' in l)
want = set(range(1, int(sys.argv[2]) + 1))
assert set(steps) == want, f"steps missing: {sorted(want - set(steps))[:10]}, extra: {sorted(set(steps) - want)[:10]}"
twice = [s for s, n in steps.items() if n > 1]
assert not twice, f"steps logged more than once: {twice[:10]}"
PY
say "slurm: requeued at the time limits and after a preemption, identical to the uninterrupted run, every step logged once"

# 2. Rank failures under run_cpu.sh --max-restarts.
cd "$tmp"
"$src/launch/run_cpu.sh" --max-restarts 2 2 "$src/configs/tiny.ini" "${run_args[@]}" --checkpoint.every 100 \
  --train.out_dir "$tmp/restarts" > "$tmp/restarts.log" 2>&1 &
run_pid=$!
until [ "$(logged_step "$tmp/restarts")" -ge 130 ]; do
  kill -0 "$run_pid" 2>/dev/null || fail "run_cpu.sh ended before the kill"
  sleep 0.2
done
victim=$(pgrep -f "^[^ ]*moe-train --config .*$tmp/restarts" | tail -n 1)
[ -n "$victim" ] || fail "no rank to kill"
kill -KILL "$victim"
say "killed rank pid $victim at step $(logged_step "$tmp/restarts")"
wait "$run_pid" || fail "run_cpu.sh --max-restarts 2 did not finish the run"
grep -q "restart 1 of 2: the run failed with status .* at checkpoint step 100" "$tmp/restarts.log" ||
  fail "no restart logged with its cause"
same_as_reference "$tmp/restarts"
say "rank failure: restarted from step 100, identical to the uninterrupted run"

status=0
MOE_CHECKPOINT_FAULT=before_write:0:fail "$src/launch/run_cpu.sh" --max-restarts 2 2 "$src/configs/tiny.ini" \
  --data.dir "$tmp/data" --model.vocab_size 1024 --train.steps 30 --checkpoint.every 20 --train.out_dir "$tmp/stuck" > "$tmp/stuck.log" 2>&1 ||
  status=$?
[ "$status" != 0 ] || fail "a run whose every save fails must fail"
[ "$(grep -c "restart [0-9] of 2" "$tmp/stuck.log")" = 1 ] || fail "a run failing at the same step must be retried once"
grep -q "where it failed before: not restarted" "$tmp/stuck.log" || fail "no reason given for not restarting"
say "a run failing at the same step: retried once, then not"

status=0
"$src/launch/run_cpu.sh" --max-restarts 2 2 "$src/configs/tiny.ini" --train.stepz 5 > "$tmp/bad.log" 2>&1 || status=$?
[ "$status" = 2 ] || fail "a bad option must exit 2, got $status"
grep -q "unrecognised option '--train.stepz'" "$tmp/bad.log" || fail "the bad option was not named"
! grep -q "restart" "$tmp/bad.log" || fail "a bad option must not be retried"
say "a bad option: status 2, not retried"
say "passed"
