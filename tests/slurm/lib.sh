# Shared helpers for the throw-away SLURM clusters used by tests/test_slurm.py.
# Sourced by the other scripts in this folder; not meant to be run.

# Fail with one line on stderr.
die() { echo "tests/slurm: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (slurmd runs jobs as root here)"; }

need_slurm() {
  local b
  for b in slurmctld slurmd sbatch sinfo scontrol; do
    command -v "$b" >/dev/null || die "$b not found: apt-get install -y slurm-wlm"
  done
}

# wait_idle CONF WANT_NODES TIMEOUT_S: poll sinfo until WANT_NODES nodes are idle.
wait_idle() {
  local conf=$1 want=$2 timeout=$3 t=0 idle
  while :; do
    idle=$(SLURM_CONF=$conf sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2=="idle"' | sort -u | wc -l)
    [ "$idle" -ge "$want" ] && return 0
    [ "$t" -ge $((timeout * 10)) ] && return 1
    sleep 0.1; t=$((t + 1))
  done
}

# stop_pidfile FILE NAME: TERM the daemon named in FILE, wait up to 10 s, then KILL it.
stop_pidfile() {
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "tests/slurm: $name (pid $pid) ignored TERM, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

# The slurm.conf keys both clusters share. Arguments: DIR CTLD_PORT SLURMD_PORT.
common_conf() {
  local dir=$1 cport=$2 dport=$3
  cat <<CONF
# Written by tests/slurm for a throw-away test cluster; nothing here is for production.
ClusterName=pnntest
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$cport
SlurmdPort=$dport
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/slurmctld.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmdSpoolDir=$dir/spool-%n
# Short waits keep the tests fast: TERM to KILL, and how long finished jobs stay visible.
KillWait=10
MinJobAge=600
# Jobs that exit 75 (EX_TEMPFAIL: the trainer checkpointed on a signal) could be
# requeued by slurmctld itself with RequeueExit=75; the job scripts call
# 'scontrol requeue' instead, so this stays off and the test exercises the scripts.
CONF
}
