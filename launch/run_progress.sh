# Sourced by the launch scripts (after mpi_env.sh): what a run is and how far it has come, read
# from the files it leaves, so that a script restarts a failed run or requeues a stopped one only
# when that makes progress.
#   resolve_run CONFIG [--group.key value ...]  sets run_out_dir and run_steps from the resolved
#                                               configuration (moe-train --dump-config); a bad
#                                               option prints moe-train's error and returns 2
#   checkpoint_step OUT_DIR   the step of the checkpoint `latest` names; -1 if none
#   logged_step OUT_DIR       the last training step in metrics.jsonl; -1 if none
#   run_with_restarts MAX OUT_DIR COMMAND...   runs COMMAND, relaunching it after a failure

launch_log() { echo "[launch $(date +%T)] $*" >&2; }

resolve_run() {
  local config="$1" resolved status=0
  shift
  resolved="$("$bin/moe-train" --config "$config" "$@" --dump-config)" || status=$?
  [ "$status" = 0 ] || return 2  # moe-train printed the reason; a configuration error
  run_out_dir="$(ini_value train out_dir <<< "$resolved")"
  run_steps="$(ini_value train steps <<< "$resolved")"
}

# ini_value SECTION KEY < INI: the value of KEY in [SECTION] of an INI text (dump_config's form).
ini_value() {
  awk -v section="[$1]" -v key="$2" '
    /^\[/ { inside = ($0 == section); next }
    inside && $1 == key && $2 == "=" { sub(/^[^=]*=[ \t]*/, ""); print; exit }'
}

checkpoint_step() {
  local latest="$1/checkpoints/latest" name
  [ -f "$latest" ] || { echo -1; return; }
  name="$(tr -d '[:space:]' < "$latest")"
  [[ "$name" =~ ^step_0*([0-9]+)$ ]] && echo "${BASH_REMATCH[1]}" || echo -1
}

logged_step() {
  local metrics="$1/metrics.jsonl" step
  [ -f "$metrics" ] || { echo -1; return; }
  step="$(grep '^{"type":"train"' "$metrics" | tail -n 1 | sed -E 's/.*"step":([0-9]+).*/\1/')"
  echo "${step:--1}"
}

# What an exit status says: a signal (128 + n) by name.
exit_cause() {
  local status="$1"
  if [ "$status" -gt 128 ] && [ "$status" -lt 160 ]; then
    echo "status $status (SIG$(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128))))"
  else
    echo "status $status"
  fi
}

# Runs COMMAND (an mpirun command line of moe-train, which resumes from its latest checkpoint with
# --checkpoint.resume auto) and relaunches it when it fails, at most MAX times. Not relaunched: a
# success, a configuration error (status 2), and a run that fails again where it failed before
# (the same latest checkpoint and the same last logged step).
run_with_restarts() {
  local max="$1" out_dir="$2"
  shift 2
  local restarts=0 status where previous=""
  while true; do
    status=0
    "$@" || status=$?
    [ "$status" = 0 ] && return 0
    if [ "$status" = 2 ]; then
      launch_log "moe-train refused its configuration (status 2): not restarted"
      return 2
    fi
    where="checkpoint step $(checkpoint_step "$out_dir"), last logged step $(logged_step "$out_dir")"
    if [ "$restarts" -ge "$max" ]; then
      launch_log "the run failed with $(exit_cause "$status") at $where; no restarts left (--max-restarts $max)"
      return "$status"
    fi
    if [ "$where" = "$previous" ]; then
      launch_log "the run failed again with $(exit_cause "$status") at $where, where it failed before: not restarted"
      return "$status"
    fi
    restarts=$((restarts + 1))
    previous="$where"
    launch_log "restart $restarts of $max: the run failed with $(exit_cause "$status") at $where;" \
               "relaunching from its latest checkpoint"
  done
}

# Parses a leading "--max-restarts N" of a launch script's arguments: sets max_restarts (0 without
# it) and args_shift (how many arguments it took).
parse_max_restarts() {
  max_restarts=0 args_shift=0
  if [ "${1:-}" = --max-restarts ]; then
    [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "--max-restarts takes a number of restarts, got '${2:-}'" >&2; return 2; }
    max_restarts="$2" args_shift=2
  fi
}

# Runs the launch scripts' command line launch_cmd (an array): as it is without --max-restarts,
# else under run_with_restarts. Arguments: moe-train's (CONFIG [--group.key value ...]), to find
# the run's directory.
launch_run() {
  [ "$max_restarts" = 0 ] && exec "${launch_cmd[@]}"
  resolve_run "$@" || exit 2
  launch_log "up to $max_restarts restarts after a failure (run directory $run_out_dir)"
  run_with_restarts "$max_restarts" "$run_out_dir" "${launch_cmd[@]}"
}
