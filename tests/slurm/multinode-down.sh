#!/usr/bin/env bash
# Undo multinode-up.sh: cancel jobs, stop the daemons by PID file, delete the node
# namespaces (which deletes their veths) and the bridge. Safe to run twice, or
# after a half-finished setup. The nodes' private mounts live only in their mount
# namespaces and vanish with their last process.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
dir=${1:-${PNN_MPI_SLURM_MN_DIR:-/var/tmp/pnn-slurm-multinode}}
if [ -s "$dir/slurmctld.pid" ] && [ -f "$dir/slurm.conf" ]; then
  SLURM_CONF=$dir/slurm.conf timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1 || true
  sleep 0.5
fi
for f in "$dir"/slurmd-*.pid; do
  [ -e "$f" ] && stop_pidfile "$f" slurmd
done
stop_pidfile "$dir/slurmctld.pid" slurmctld
# Anything still running inside a node namespace (a stray job step) goes too.
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^pnn-node[0-9]+$/ {print $1}'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  ip netns del "$ns" || echo "tests/slurm: could not delete namespace $ns" >&2
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^pnn-veth[0-9]+$'); do
  ip link del "$link" 2>/dev/null || true
done
ip link show pnnbr0 >/dev/null 2>&1 && ip link del pnnbr0
exit 0
