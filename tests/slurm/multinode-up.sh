#!/usr/bin/env bash
# Start a SLURM cluster of NODES (default 2) "hosts" on this one machine (as root):
# each node is a network namespace joined to a bridge by a veth pair, with its own
# hostname (UTS namespace) and its own /tmp, /dev/shm and /etc/hosts (mount
# namespace); slurmctld runs in the root network namespace on the bridge address.
# MPI traffic between ranks on different nodes must cross the veths.
#
#   tests/slurm/multinode-up.sh [DIR]      default DIR: /var/tmp/pnn-slurm-multinode
#   export SLURM_CONF=DIR/slurm.conf
#   tests/slurm/multinode-down.sh [DIR]
#
# DIR must not be under /tmp: each node mounts its own /tmp over the real one and
# would no longer see it. For the same reason jobs must work in folders outside /tmp;
# folders under /tmp that the nodes must still see (a checkout and its .venv, the
# data) are listed in PNN_MPI_SLURM_SHARE, colon-separated: each node mounts them
# back at the same path inside its own /tmp.
# Network: bridge pnnbr0 = 10.200.0.1/24 (controller "head"), node i = 10.200.0.1i
# on eth0 of namespace pnn-nodei; the veth's bridge side is pnn-vethi (read its
# byte counters with `ip -s link show pnn-vethi`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need_root
need_slurm
for b in ip nsenter unshare; do command -v "$b" >/dev/null || die "$b not found (iproute2, util-linux)"; done

dir=${1:-${PNN_MPI_SLURM_MN_DIR:-/var/tmp/pnn-slurm-multinode}}
nodes=${NODES:-2}
cpus=${CPUS:-8}
port=${PNN_MPI_SLURM_MN_PORT:-16827}
net=10.200.0
bridge=pnnbr0
[ "$nodes" -ge 1 ] && [ "$nodes" -le 9 ] || die "NODES must be 1..9"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
case $dir/ in /tmp/*) die "DIR $dir is under /tmp, which each node replaces: use another folder";; esac
conf=$dir/slurm.conf
if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
  die "a cluster already runs in $dir (stop it with tests/slurm/multinode-down.sh $dir)"
fi
ip link show "$bridge" >/dev/null 2>&1 && die "bridge $bridge exists already: run tests/slurm/multinode-down.sh first"

# From here on, a failure undoes what was set up.
trap 'echo "tests/slurm: setup failed, tearing down" >&2; "$here/multinode-down.sh" "$dir" >&2' ERR

# ---- network: a bridge in the root namespace, one namespace + veth per node
ip link add "$bridge" type bridge
ip addr add "$net.1/24" dev "$bridge"
ip link set "$bridge" up
for i in $(seq "$nodes"); do
  ns=pnn-node$i
  ip netns add "$ns"
  ip link add "pnn-veth$i" type veth peer name eth0 netns "$ns"
  ip link set "pnn-veth$i" master "$bridge" up
  ip -n "$ns" addr add "$net.1$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done

# ---- files: hosts (bind-mounted over /etc/hosts in every node), config, per-node dirs
rm -rf "$dir/state" "$dir"/spool-* "$dir"/*.log "$dir/node"*
mkdir -p "$dir/state"
{
  echo "127.0.0.1 localhost"
  echo "$net.1 head"
  for i in $(seq "$nodes"); do echo "$net.1$i node$i"; done
} >"$dir/hosts"
{
  common_conf "$dir" "$port" $((port + 1))
  echo "SlurmctldHost=head($net.1)"
  for i in $(seq "$nodes"); do
    echo "NodeName=node$i NodeAddr=$net.1$i NodeHostname=node$i CPUs=$cpus State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=node[1-$nodes] Default=YES MaxTime=INFINITE State=UP"
} >"$conf"

# ---- slurmctld: hostname "head" (it checks SlurmctldHost against its own name)
unshare --uts sh -c 'hostname head && exec slurmctld -i -f "$1"' sh "$conf"

# ---- one slurmd per node, in the node's network namespace (nsenter, not `ip netns
# exec`, which remounts /sys and hides the cgroup tree slurmd needs), with its own
# hostname, /tmp, /dev/shm and /etc/hosts. slurmd forks; the namespaces live on in it
# and in every job step it starts.
for i in $(seq "$nodes"); do
  mkdir -p "$dir/node$i/tmp" "$dir/node$i/shm"
  chmod 1777 "$dir/node$i/tmp" "$dir/node$i/shm"
  nsenter --net="/run/netns/pnn-node$i" unshare --uts --mount --propagation private \
    sh -ec 'hostname "$1"
            kept= n=0
            IFS=:
            for path in $4; do              # hold on to shared folders under /tmp ...
              case $path/ in /tmp/?*) ;; *) continue;; esac
              n=$((n + 1)); mkdir -p "$2/$1/keep/$n"; mount --bind "$path" "$2/$1/keep/$n"
              kept="$kept$n=$path:"
            done
            mount --bind "$2/$1/tmp" /tmp
            for entry in $kept; do          # ... and put them back inside the private /tmp
              [ -n "$entry" ] || continue
              mkdir -p "${entry#*=}"; mount --bind "$2/$1/keep/${entry%%=*}" "${entry#*=}"
            done
            unset IFS
            mount --bind "$2/$1/shm" /dev/shm
            mount --bind "$2/hosts" /etc/hosts
            exec slurmd -f "$3" -N "$1"' sh "node$i" "$dir" "$conf" "${PNN_MPI_SLURM_SHARE:-}"
done

if ! wait_idle "$conf" "$nodes" 30; then
  echo "tests/slurm: nodes not idle after 30 s; sinfo says:" >&2
  SLURM_CONF=$conf sinfo -N >&2 || true
  tail -n 20 "$dir/slurmctld.log" "$dir"/slurmd-*.log >&2 || true
  false
fi
trap - ERR
echo "export SLURM_CONF=$conf"
