#!/usr/bin/env bash
# Start a one-node SLURM cluster on 127.0.0.1 in a private folder (as root).
#
#   tests/slurm/cluster-up.sh [DIR]      default DIR: $PNN_MPI_SLURM_DIR or /tmp/pnn-slurm
#   export SLURM_CONF=DIR/slurm.conf     then sbatch/srun/sinfo talk to it
#   tests/slurm/cluster-down.sh [DIR]    stops both daemons by their PID files
#
# The node claims CPUS (default 16) CPUs whatever the machine has
# (SlurmdParameters=config_overrides). Ports: PNN_MPI_SLURM_PORT (slurmctld,
# default 16817) and that +1 (slurmd), away from a system SLURM's 6817/6818.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need_root
need_slurm

dir=${1:-${PNN_MPI_SLURM_DIR:-/tmp/pnn-slurm}}
cpus=${CPUS:-16}
port=${PNN_MPI_SLURM_PORT:-16817}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/slurm.conf

if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
  die "a cluster already runs in $dir (stop it with tests/slurm/cluster-down.sh $dir)"
fi
# Another SLURM (or anything) on our ports would answer our clients instead of ours.
for p in "$port" $((port + 1)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "port $p is in use: set PNN_MPI_SLURM_PORT to a free pair (PORT, PORT+1)"
  fi
done
rm -rf "$dir/state" "$dir"/spool-* "$dir"/*.log
mkdir -p "$dir/state"
{
  common_conf "$dir" "$port" $((port + 1))
  echo "SlurmctldHost=localhost"
  echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN"
  echo "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
} >"$conf"

# -i: ignore saved state (there is none we want); both daemons fork and write PID files.
slurmctld -i -f "$conf"
slurmd -f "$conf" -N localhost
if ! wait_idle "$conf" 1 30; then
  echo "tests/slurm: node not idle after 30 s; sinfo says:" >&2
  SLURM_CONF=$conf sinfo -N >&2 || true
  tail -n 20 "$dir/slurmctld.log" "$dir"/slurmd-*.log >&2 || true
  "$here/cluster-down.sh" "$dir"
  exit 1
fi
echo "export SLURM_CONF=$conf"
