#!/usr/bin/env bash
# A real two-node Slurm on this machine, for the `slurm` tests: slurmctld in this network namespace,
# two slurmd (lo-n1, lo-n2), each in a network namespace of its own with its own hostname, /etc/hosts
# and address on a veth bridge, each node with 4 fake GPUs.
#
#   tests/slurm/cluster.sh start          # install (Debian packages) if missing, start; starts only what is down
#   tests/slurm/cluster.sh stop           # cancel jobs, SIGTERM daemons by pid file, remove the namespaces
#   tests/slurm/cluster.sh status         # exit 0 when the controller answers
#   tests/slurm/cluster.sh env            # print the export line clients need (SLURM_CONF)
#   tests/slurm/cluster.sh kill-node N    # SIGKILL node N's slurmd (a node failure); `start` brings it back
#
# Everything (config, spool, state, logs, pid files) lives under $LIGHTS_OUT_SLURM_DIR
# (default /tmp/lights-out-slurm). Clients find the cluster through SLURM_CONF=<dir>/slurm.conf.
#
# Why namespaces: Debian's slurmd is built without --enable-multiple-slurmd, so two slurmd on one
# host need two network stacks (each listens on port 6818 of its own address) and two hostnames.
# Only the network, the hostname and /etc/hosts are private to a node; the file system is shared,
# as on a cluster with a shared home. Runs as root on Debian 12 (Slurm 22.05, no systemd needed).
set -euo pipefail

DIR="${LIGHTS_OUT_SLURM_DIR:-/tmp/lights-out-slurm}"
CONF="$DIR/slurm.conf"
CPUS="${LIGHTS_OUT_SLURM_CPUS:-4}"   # per node, declared, not real: config_overrides lets several jobs run at once
GPUS=4                               # per node
NODES=(lo-n1 lo-n2)
NET=10.77.0                          # the bridge's /24: controller .1, node k .1k
BRIDGE=lo-slurm-br
export SLURM_CONF="$CONF"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# A pid counts as alive unless gone or a zombie (a zombie holds no resources).
pid_alive() {
    local pid="$1"
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

pidfile_alive() { [ -s "$1" ] && pid_alive "$(cat "$1")"; }

node_pidfile() { echo "$DIR/slurmd.$1.pid"; }
node_ns() { echo "lo-slurm-${1#lo-}"; }
node_addr() { echo "$NET.1${1#lo-n}"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null && command -v ip >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root; run as root or install slurmctld slurmd slurm-client munge iproute2."
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is missing; install slurmctld slurmd slurm-client munge iproute2 yourself."
    echo "cluster.sh: installing slurmctld slurmd slurm-client munge iproute2 (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge iproute2 >/dev/null
}

write_config() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/gpus"
    local i node
    for i in $(seq 0 $((GPUS - 1))); do
        # Symlinks to /dev/null: Slurm needs device files to set CUDA_VISIBLE_DEVICES; regular
        # files give no CUDA_VISIBLE_DEVICES and a missing File= drains the node.
        ln -sfn /dev/null "$DIR/gpus/nvidia$i"
    done
    cat >"$DIR/gres.conf" <<GRES
AutoDetect=off
NodeName=lo-n[1-${#NODES[@]}] Name=gpu File=$DIR/gpus/nvidia[0-$((GPUS - 1))]
GRES
    {
        echo "127.0.0.1 localhost"
        echo "$NET.1 lo-ctl"
        for node in "${NODES[@]}"; do echo "$(node_addr "$node") $node"; done
    } >"$DIR/hosts"
    cat >"$CONF" <<CONF
ClusterName=lightsout
# slurmctld accepts the name localhost on any host; clients and nodes reach it at the bridge address.
SlurmctldHost=localhost($NET.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=1000
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
# A node whose slurmd is gone is DOWN (its jobs NODE_FAIL) after this many seconds, not 5 minutes.
SlurmdTimeout=10
GresTypes=gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
# The main scheduling loop runs at most every 2 s by default: a second job would wait for it.
SchedulerParameters=sched_min_interval=100000
NodeName=lo-n[1-${#NODES[@]}] NodeAddr=$NET.1[1-${#NODES[@]}] CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$((CPUS * 1000)) Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=lo-n[1-${#NODES[@]}] Default=YES MaxTime=INFINITE State=UP
CONF
}

bridge_up() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge 2>/dev/null \
            || die "cannot create the bridge $BRIDGE: the two-node cluster needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN (network namespaces); run it on a machine or container that allows them."
        ip addr add "$NET.1/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    local node ns host_if
    for node in "${NODES[@]}"; do
        ns=$(node_ns "$node")
        host_if="lo-v${node#lo-n}"
        if ! ip netns list | grep -qw "$ns"; then
            ip netns add "$ns"
        fi
        if ! ip link show "$host_if" >/dev/null 2>&1; then
            ip link add "$host_if" type veth peer name eth0 netns "$ns"
            ip link set "$host_if" master "$BRIDGE" up
            ip -n "$ns" addr add "$(node_addr "$node")/24" dev eth0
            ip -n "$ns" link set eth0 up
            ip -n "$ns" link set lo up
        fi
    done
}

bridge_down() {
    local node
    for node in "${NODES[@]}"; do
        ip netns list | grep -qw "$(node_ns "$node")" && ip netns delete "$(node_ns "$node")"
        ip link show "lo-v${node#lo-n}" >/dev/null 2>&1 && ip link delete "lo-v${node#lo-n}"
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE"; fi
}

start_node() {
    local node="$1"
    # A mount namespace of its own so that /etc/hosts names the cluster without touching the host's;
    # the hostname is the node name (Slurm's and torch.distributed's view of where a rank runs).
    # nsenter, not `ip netns exec`: that one mounts a fresh /sys without the cgroup file system slurmd needs.
    nsenter --net="/run/netns/$(node_ns "$node")" unshare --uts --mount --propagation private \
        sh -c "echo $node >/proc/sys/kernel/hostname && mount --bind '$DIR/hosts' /etc/hosts \
               && exec slurmd -N $node -f '$CONF'"
}

controller_up() { pidfile_alive "$DIR/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q 'is UP'; }

nodes_ready() {
    local node
    for node in "${NODES[@]}"; do
        scontrol show node "$node" 2>/dev/null | grep -Eq 'State=(IDLE|MIXED|ALLOCATED)( |$)' || return 1
    done
}

all_up() {
    controller_up || return 1
    local node
    for node in "${NODES[@]}"; do pidfile_alive "$(node_pidfile "$node")" || return 1; done
    nodes_ready
}

start() {
    if all_up; then
        echo "cluster.sh: already running (SLURM_CONF=$CONF)"
        return 0
    fi
    local t0=$SECONDS node
    install_packages
    if ! pidfile_alive "$DIR/slurmctld.pid"; then
        write_config  # only for a fresh controller: a running one keeps the config it read
    fi
    bridge_up
    if ! pidfile_alive /run/munge/munged.pid; then
        install -d -o munge -g munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        cp /run/munge/munged.pid "$DIR/munged.pid"   # ours: stop ends it too
    fi
    # -c: a fresh controller state (no jobs of an earlier test session).
    pidfile_alive "$DIR/slurmctld.pid" || slurmctld -c -f "$CONF"
    for node in "${NODES[@]}"; do
        mkdir -p "$DIR/spool/$node"
        pidfile_alive "$(node_pidfile "$node")" || start_node "$node"
    done
    local deadline=$((SECONDS + 90))
    until controller_up && nodes_ready; do
        [ $SECONDS -lt $deadline ] || die "the cluster did not come up in 90 s; see $DIR/slurmctld.log and $DIR/slurmd.*.log."
        # A node that was DOWN (its slurmd killed) comes back by itself (ReturnToService=2) once it
        # registers; resume it in case it was marked down for another reason.
        for node in "${NODES[@]}"; do
            if scontrol show node "$node" 2>/dev/null | grep -Eq 'State=(DOWN|DRAIN)'; then
                scontrol update nodename="$node" state=resume 2>/dev/null || true
            fi
        done
        sleep 0.3
    done
    echo "cluster.sh: started in $((SECONDS - t0)) s (SLURM_CONF=$CONF)"
}

kill_node() {
    local node="lo-n${1:?kill-node needs a node number, e.g. kill-node 2}" f
    f=$(node_pidfile "$node")
    pidfile_alive "$f" || die "$node's slurmd is not running."
    kill -KILL "$(cat "$f")"
    echo "cluster.sh: killed $node's slurmd (pid $(cat "$f"))"
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
    local f node pids=()
    for f in "$DIR"/slurmd.*.pid "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
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
    bridge_down
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
    kill-node) kill_node "${2:-}" ;;
    *) die "usage: cluster.sh start|stop|status|env|kill-node N" ;;
esac
