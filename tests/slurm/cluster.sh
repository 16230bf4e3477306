#!/usr/bin/env bash
# A real single-node Slurm for the tests (tests/test_slurm.py) and CI: munge + slurmctld + slurmd on this machine.
#
#   tests/slurm/cluster.sh start DIR   install slurm-wlm and munge if missing (Debian, as root), write DIR/slurm.conf
#                                      (one node: this host, its CPUs) and start munged, slurmctld and slurmd;
#                                      idempotent: what already runs from DIR is kept. Prints `SLURM_CONF=DIR/slurm.conf`
#                                      and `STARTED=1` when it started slurmctld (else `STARTED=0`: it was running).
#   tests/slurm/cluster.sh stop DIR    stop the daemons that `start` started (their pids are in DIR), nothing else.
#
# Exit 3 from `start` means Slurm cannot be installed here (not root, no apt-get, no Debian packages): the tests skip.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # stop the daemon whose pid file is $1 (only ours: the file lives in our folder)
  local f=$1 pid
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

if [[ "$cmd" == stop ]]; then
  # running jobs first (their steps are children of slurmd's slurmstepd), then the daemons
  if alive "$dir/slurmctld.pid" && command -v scancel >/dev/null; then
    SLURM_CONF="$dir/slurm.conf" scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
    sleep 1
  fi
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munged.pid"
  exit 0
fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

need_install=0
for b in slurmctld slurmd sbatch munged; do
  command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] || need_install=1
done
if (( need_install )); then
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "cannot install slurm-wlm and munge: needs root and apt-get" >&2; exit 3
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$dir/apt.log" 2>&1; then
    apt-get update -qq >>"$dir/apt.log" 2>&1 || true
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$dir/apt.log" 2>&1 \
      || { echo "cannot install slurm-wlm and munge (see $dir/apt.log)" >&2; exit 3; }
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
[[ $(id -u) == 0 ]] || { echo "starting slurmd needs root" >&2; exit 3; }

# munge: its own user, its folders owned by it, one key for the machine
id munge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
if ! munge -n </dev/null >/dev/null 2>&1; then  # no munged answers: start ours
  rm -f /run/munge/munge.socket.2.lock
  su -s /bin/sh munge -c "munged --pid-file=/run/munge/munged.pid" >"$dir/munged.out" 2>&1 \
    || { echo "munged did not start: $(cat "$dir/munged.out")" >&2; exit 1; }
  cp /run/munge/munged.pid "$dir/munged.pid"
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
mkdir -p "$dir/state" "$dir/spool"
cat >"$dir/slurm.conf.new" <<EOF
# written by tests/slurm/cluster.sh: one node, for racemarl's tests
ClusterName=racemarl-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if [[ -f "$dir/slurm.conf" ]] && cmp -s "$dir/slurm.conf" "$dir/slurm.conf.new"; then
  rm "$dir/slurm.conf.new"
else
  mv "$dir/slurm.conf.new" "$dir/slurm.conf"
fi
export SLURM_CONF="$dir/slurm.conf"

started=0
if ! alive "$dir/slurmctld.pid"; then
  started=1
  slurmctld -c -f "$SLURM_CONF" || { echo "slurmctld did not start; see $dir/slurmctld.log" >&2; exit 1; }
fi
if ! alive "$dir/slurmd.pid"; then
  slurmd -f "$SLURM_CONF" || { echo "slurmd did not start; see $dir/slurmd.log" >&2; exit 1; }
fi
for _ in $(seq 150); do
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
  [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] && break
  sleep 0.2
done
if [[ "$state" != idle* && "$state" != mix* && "$state" != alloc* ]]; then
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
  [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] \
    || { echo "the Slurm node is '$state', not idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2; exit 1; }
fi
echo "SLURM_CONF=$SLURM_CONF"
echo "STARTED=$started"
