# Sourced by the Slurm tests: a private single-node Slurm on this machine (Debian's munge,
# slurmctld and slurmd), with its own config, state, ports and munge key under a directory, so that
# it touches nothing of a system Slurm. Needs root (the daemons run as root).
#   slurm_start DIR   starts munged, slurmctld and slurmd; exports SLURM_CONF; returns non-zero,
#                     saying why, when a daemon does not come up
#   slurm_stop        stops them (call it from an EXIT trap)

_slurm_dir=""
_slurm_foreign_stepds=""  # slurmstepd processes of another Slurm, there before ours started

_slurm_free_port() {  # a TCP port nothing listens on, from a range away from the usual services
  local port
  for _ in $(seq 50); do
    port=$(( 20000 + RANDOM % 20000 ))
    ss -Htln "sport = :$port" 2>/dev/null | grep -q . || { echo "$port"; return; }
  done
  return 1
}

slurm_start() {
  local dir="$1" host cpus memory ctld_port slurmd_port
  _slurm_dir="$dir"
  _slurm_foreign_stepds="$(pgrep -x slurmstepd | tr '\n' ' ')"
  for tool in munged slurmctld slurmd sbatch scontrol squeue ss; do
    command -v "$tool" > /dev/null || { echo "slurm: '$tool' not found (launch/setup.sh --slurm installs it)"; return 1; }
  done
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 700 "$dir/munge"
  head -c 1024 /dev/urandom > "$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" ||
    { echo "slurm: munged did not start: $(tail -n 3 "$dir/munge/munged.log" 2>/dev/null)"; return 1; }
  host="$(hostname -s)" cpus="$(nproc --all)"
  memory=$(( $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) - 1024 ))
  ctld_port="$(_slurm_free_port)" && slurmd_port="$(_slurm_free_port)" || { echo "slurm: no free port"; return 1; }
  cat > "$dir/slurm.conf" <<EOF
ClusterName=moetest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=60
MinJobAge=3600
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -c -f "$SLURM_CONF" || { echo "slurm: slurmctld did not start: $(tail -n 5 "$dir/slurmctld.log")"; return 1; }
  slurmd -f "$SLURM_CONF" || { echo "slurm: slurmd did not start: $(tail -n 5 "$dir/slurmd.log")"; return 1; }
  for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -qx idle && return 0
    sleep 1
  done
  echo "slurm: the node did not become idle in 60 s: $(sinfo 2>&1 | tail -n 2); $(tail -n 5 "$dir/slurmctld.log")"
  return 1
}

slurm_stop() {
  [ -n "$_slurm_dir" ] || return 0
  local pidfile
  for pidfile in "$_slurm_dir/slurmd.pid" "$_slurm_dir/slurmctld.pid" "$_slurm_dir/munge/munged.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  sleep 1
  for pidfile in "$_slurm_dir/slurmd.pid" "$_slurm_dir/slurmctld.pid" "$_slurm_dir/munge/munged.pid"; do
    [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
  done
  return 0
}

# The job's state (PENDING, RUNNING, COMPLETED, ...).
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }

# A requeued job waits about two minutes (Slurm's own delay) before it may start again; the tests
# let it start at once, but only after the previous start's slurmstepd has gone: a start while it
# still tears down is killed ("Killing non-startable batch job: Job credential revoked", seen on a
# loaded machine). Not StartTime=now+N: a job that the backfill scheduler starts got the --signal
# at once (Slurm 22.05, seen here), where the main scheduler's starts get it on time.
release_requeued() {
  scontrol show job "$1" 2>/dev/null | grep -q "Reason=BeginTime" || return 0
  local pid
  for pid in $(pgrep -x slurmstepd); do
    [[ " $_slurm_foreign_stepds " == *" $pid "* ]] || return 0  # ours, still tearing down
  done
  scontrol update JobId="$1" StartTime=now 2>/dev/null
  return 0
}
