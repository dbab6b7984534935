#!/usr/bin/env bash
# Stop the one-node test cluster that cluster-up.sh started in DIR (by PID files).
# Jobs still running are cancelled first, so their processes go with them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
dir=${1:-${PNN_MPI_SLURM_DIR:-/tmp/pnn-slurm}}
[ -d "$dir" ] || exit 0
if [ -s "$dir/slurmctld.pid" ] && [ -f "$dir/slurm.conf" ]; then
  SLURM_CONF=$dir/slurm.conf timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1 || true
  sleep 0.5
fi
for f in "$dir"/slurmd-*.pid; do
  [ -e "$f" ] && stop_pidfile "$f" "slurmd"
done
stop_pidfile "$dir/slurmctld.pid" slurmctld
