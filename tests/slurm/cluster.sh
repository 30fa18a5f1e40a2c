#!/usr/bin/env bash
# A real one-node Slurm on localhost with 4 fake GPUs, for the `slurm` tests.
#
#   tests/slurm/cluster.sh start   # install (Debian packages) if missing, start; no-op when running
#   tests/slurm/cluster.sh stop    # cancel jobs, SIGTERM daemons by pid file, verify they are gone
#   tests/slurm/cluster.sh status  # exit 0 when the controller answers
#   tests/slurm/cluster.sh env     # print the export line clients need (SLURM_CONF)
#
# Everything (config, spool, state, logs, pid files) lives under $LIGHTS_OUT_SLURM_DIR
# (default /tmp/lights-out-slurm). Clients find the cluster through SLURM_CONF=<dir>/slurm.conf.
# Facts behind each setting: /work/shared/notes/slurm-local.md (Slurm 22.05, no systemd, root).
set -euo pipefail

DIR="${LIGHTS_OUT_SLURM_DIR:-/tmp/lights-out-slurm}"
CONF="$DIR/slurm.conf"
CPUS="${LIGHTS_OUT_SLURM_CPUS:-8}"   # declared, not real: config_overrides lets several jobs run at once
GPUS=4
export SLURM_CONF="$CONF"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# A pid counts as alive unless gone or a zombie (a zombie holds no resources).
pid_alive() {
    local pid="$1"
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

pidfile_alive() { [ -s "$1" ] && pid_alive "$(cat "$1")"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root; run as root or install slurmctld slurmd slurm-client munge."
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is missing; install slurmctld slurmd slurm-client munge yourself."
    echo "cluster.sh: installing slurmctld slurmd slurm-client munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/gpus"
    local i
    for i in $(seq 0 $((GPUS - 1))); do
        # Symlinks to /dev/null: Slurm needs device files to set CUDA_VISIBLE_DEVICES; regular
        # files give no CUDA_VISIBLE_DEVICES and a missing File= drains the node.
        ln -sfn /dev/null "$DIR/gpus/nvidia$i"
    done
    cat >"$DIR/gres.conf" <<GRES
AutoDetect=off
NodeName=localhost Name=gpu File=$DIR/gpus/nvidia[0-$((GPUS - 1))]
GRES
    cat >"$CONF" <<CONF
ClusterName=lightsout
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=2000
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
GresTypes=gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
# The main scheduling loop runs at most every 2 s by default: a second job would wait for it.
SchedulerParameters=sched_min_interval=100000
NodeName=localhost CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$((CPUS * 2000)) Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

controller_up() { pidfile_alive "$DIR/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_ready() {
    scontrol show node localhost 2>/dev/null | grep -Eq 'State=(IDLE|MIXED|ALLOCATED)'
}

start() {
    if controller_up && pidfile_alive "$DIR/slurmd.pid" && node_ready; then
        echo "cluster.sh: already running (SLURM_CONF=$CONF)"
        return 0
    fi
    local t0=$SECONDS
    install_packages
    write_config
    if ! pidfile_alive /run/munge/munged.pid; then
        install -d -o munge -g munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        cp /run/munge/munged.pid "$DIR/munged.pid"   # ours: stop ends it too
    fi
    # -c: a fresh controller state (no jobs of an earlier test session); -N: the node is
    # called localhost whatever the machine's hostname.
    pidfile_alive "$DIR/slurmctld.pid" || slurmctld -c -f "$CONF"
    pidfile_alive "$DIR/slurmd.pid" || slurmd -N localhost -f "$CONF"
    local deadline=$((SECONDS + 60))
    until controller_up && node_ready; do
        [ $SECONDS -lt $deadline ] || die "the cluster did not come up in 60 s; see $DIR/slurmctld.log and $DIR/slurmd.log."
        sleep 0.2
    done
    echo "cluster.sh: started in $((SECONDS - t0)) s (SLURM_CONF=$CONF)"
}

stop() {
    if controller_up; then
        # Cancel first: a job's slurmstepd survives a slurmd stop.
        scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while [ -n "$(squeue -h -t PD,R,CG,S,CF,SI,SO,ST,RQ,RH,RF,RS 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do
            sleep 0.2
        done
    fi
    local f pids=()
    for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
        if pidfile_alive "$f"; then
            pids+=("$(cat "$f")")
            kill -TERM "$(cat "$f")" 2>/dev/null || true
        fi
    done
    local deadline=$((SECONDS + 15)) pid left
    while :; do
        left=()
        for pid in "${pids[@]}"; do pid_alive "$pid" && left+=("$pid"); done
        [ ${#left[@]} -eq 0 ] && break
        [ $SECONDS -lt $deadline ] || die "daemons still alive after SIGTERM: ${left[*]}."
        sleep 0.1
    done
    rm -f "$DIR/munged.pid"
    echo "cluster.sh: stopped"
}

status() {
    if controller_up; then
        echo "cluster.sh: running (SLURM_CONF=$CONF)"
        sinfo -N -o '%N %T %G' 2>/dev/null || true
    else
        echo "cluster.sh: not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: cluster.sh start|stop|status|env" ;;
esac
