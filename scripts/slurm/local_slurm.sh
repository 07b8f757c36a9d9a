#!/usr/bin/env bash
# A real single-node Slurm on this machine (Debian/Ubuntu, as root), for tests and demos:
#
#   scripts/slurm/local_slurm.sh start    # install slurm-wlm + munge if needed, configure, start
#   scripts/slurm/local_slurm.sh status   # daemons and node state
#   scripts/slurm/local_slurm.sh stop     # stop the daemons this script started
#
# One node (this host) runs slurmctld and slurmd, authenticated by munge. No cgroups and no
# accounting database: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# SelectType=select/cons_tres (jobs share the node by CPU). Starting takes seconds once installed.
# The config is /etc/slurm/slurm.conf; an existing one not written by this script is left alone
# (and then `start` refuses). PIDs of the daemons it started are kept in $STATE_DIR.
set -euo pipefail

STATE_DIR=${RLTRAIN_SLURM_STATE:-/var/lib/rltrain-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by rltrain scripts/slurm/local_slurm.sh"
PARTITION=${RLTRAIN_SLURM_PARTITION:-debug}

die() { echo "local_slurm: $*" >&2; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available"
    echo "local_slurm: installing slurm-wlm and munge (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching an existing Slurm"
    fi
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$STATE_DIR"
    cat > "$CONF" <<EOF
$MARK
ClusterName=rltrain
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

alive() {  # alive PID -> true when the process exists and is not a zombie (PID 1 may not reap)
    [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"
}

running() {  # running PIDFILE -> true when the pid in it is alive
    [[ -f $1 ]] && alive "$(cat "$1")"
}

munge_works() {
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1
}

start() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    install_packages
    write_config
    mkdir -p /run/munge && chown munge:munge /run/munge
    if ! munge_works; then
        rm -f /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged
        for _ in $(seq 1 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
        cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
    fi
    if ! running "$STATE_DIR/slurmctld.pid"; then
        /usr/sbin/slurmctld -i   # -i: ignore state left by an earlier run
        touch "$STATE_DIR/started-slurmctld"
    fi
    if ! running "$STATE_DIR/slurmd.pid"; then
        /usr/sbin/slurmd
        touch "$STATE_DIR/started-slurmd"
    fi
    local state=""
    for _ in $(seq 1 60); do
        state=$(sinfo -h -p "$PARTITION" -o %T 2>/dev/null | head -1 || true)
        if [[ $state == idle* || $state == mixed* || $state == alloc* ]]; then
            echo "local_slurm: up (partition $PARTITION, node $(hostname -s) $state)"
            return
        fi
        if [[ $state == down* || $state == drain* ]]; then
            scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        fi
        sleep 0.5
    done
    die "slurm did not come up (node state: '${state}'); see /var/log/slurm/*.log"
}

stop_pidfile() {  # stop_pidfile NAME: stop the daemon whose pid file this script owns
    local f="$STATE_DIR/$1.pid"
    if running "$f"; then
        local pid
        pid=$(cat "$f")
        kill "$pid"
        for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f" "$STATE_DIR/started-$1"
}

stop() {
    scancel --user="$(id -un)" 2>/dev/null || true
    stop_pidfile slurmd
    stop_pidfile slurmctld
    stop_pidfile munged
    echo "local_slurm: stopped"
}

status() {
    if munge_works; then echo "munged: running"; else echo "munged: stopped"; fi
    for d in slurmctld slurmd; do
        if running "$STATE_DIR/$d.pid"; then echo "$d: running (started by this script)"; else echo "$d: not started by this script"; fi
    done
    sinfo 2>/dev/null || true
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
