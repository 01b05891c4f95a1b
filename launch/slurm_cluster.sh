#!/usr/bin/env bash
# A real SLURM cluster on this machine, for tests and demos: munge, MariaDB, slurmdbd, slurmctld and one slurmd
# per node, all started without systemd.
#
#   launch/slurm_cluster.sh start [--nodes N]  # idempotent: starts what is not running, waits until every node is idle
#   launch/slurm_cluster.sh status             # exit 0 when the cluster answers (sinfo + sacct), 1 otherwise
#   launch/slurm_cluster.sh stop               # cancels every job, stops what start started, removes its namespaces
#   launch/slurm_cluster.sh purge              # stop, then delete the state folder (accounting database included)
#   launch/slurm_cluster.sh env                # prints the export line that points SLURM clients at this cluster
#   launch/slurm_cluster.sh exec CMD [ARG...]  # runs CMD where the cluster's clients work (the head node, see below)
#
# One node (the default) runs on 127.0.0.1 in the machine's own network; clients work anywhere on the machine.
# With --nodes N >= 2 every node is a separate host as far as SLURM and the job can tell: a network namespace
# NAME-n<i> with its own address and hostname (a UTS namespace), linked by veth pairs to a private bridge in a
# head namespace NAME-head that holds slurmctld, slurmdbd and MariaDB (the head/login node). Only addresses in
# these namespaces are used (SUBNET.1 for the head, SUBNET.<10+i> for node i); the machine's own network is not
# touched, and stop deletes the namespaces with their interfaces. On every node /etc/netns/<namespace>/hosts is
# mounted over /etc/hosts (all the cluster's names) and /etc/netns/<namespace>/slurm over /etc/slurm (plain `sinfo`
# works). Clients reach that cluster from the head node only: `launch/slurm_cluster.sh exec sbatch ...` (or
# `ip netns exec NAME-head ...`). The file system is shared, so jobs on every node read and write the same files.
#
# Needs root and the packages of .ci/install_cluster.sh.
# Settings (environment variables, with defaults):
#   SLURM_CLUSTER_DIR=/tmp/stereo_exp_slurm   state, spool, logs, generated slurm.conf and the MariaDB data
#   SLURM_CLUSTER_NAME=stereo                 ClusterName (registered once in the accounting database); with
#                                             --nodes N >= 2 also the prefix of the namespaces and host names
#   SLURM_CLUSTER_NODES=1                     nodes (--nodes N wins); recorded at start for stop/status/exec
#   SLURM_CLUSTER_SUBNET=10.217.0             first three octets of the private /24 of a multi-node cluster
#   SLURM_CLUSTER_PORT=6817                   slurmctld; slurmd, slurmdbd and MariaDB use the next three ports
#   SLURM_CLUSTER_PARTITION=debug             the one (default) partition
#   SLURM_CLUSTER_OVERSUBSCRIBE=4             jobs that may share one core (OverSubscribe=FORCE:N); 1 = no sharing
#   SLURM_CLUSTER_KILL_WAIT=10                seconds between SIGTERM and SIGKILL at the time limit/cancel/requeue
#   SLURM_CLUSTER_REQUEUE_DELAY=10            seconds a requeued job waits before it may start again (cred_expire)
#   SLURM_CLUSTER_SCHED_INTERVAL=2            seconds between scheduling passes over pending jobs
#   SLURM_CLUSTER_START_TIMEOUT=180           seconds to wait for each daemon to answer
#
# Clients (sbatch, sinfo, sacct, submitit) find the cluster through SLURM_CONF=$SLURM_CLUSTER_DIR/etc/slurm.conf;
# when /etc/slurm/slurm.conf does not exist, starting a one-node cluster also links it there so that plain `sinfo`
# works, and stop removes that link again. An existing /etc/slurm/slurm.conf that is not ours is never touched.
# start rewrites the configs every time, but daemons that already run keep theirs: changed settings take effect
# after stop + start. Two clusters run side by side when they differ in SLURM_CLUSTER_DIR, SLURM_CLUSTER_PORT and
# SLURM_CLUSTER_NAME; each stops only the processes of its own pid files and namespaces. docs/CLUSTER.md records
# how jobs, signals and requeue behave on these clusters.
set -euo pipefail

DIR=${SLURM_CLUSTER_DIR:-/tmp/stereo_exp_slurm}
NAME=${SLURM_CLUSTER_NAME:-stereo}
NODES=${SLURM_CLUSTER_NODES:-1}
NODES_GIVEN=${SLURM_CLUSTER_NODES:-} # set when the node count was asked for (--nodes sets it too)
SUBNET=${SLURM_CLUSTER_SUBNET:-10.217.0}
PORT=${SLURM_CLUSTER_PORT:-6817}
PARTITION=${SLURM_CLUSTER_PARTITION:-debug}
OVERSUBSCRIBE=${SLURM_CLUSTER_OVERSUBSCRIBE:-4}
KILL_WAIT=${SLURM_CLUSTER_KILL_WAIT:-10}
REQUEUE_DELAY=${SLURM_CLUSTER_REQUEUE_DELAY:-10}
SCHED_INTERVAL=${SLURM_CLUSTER_SCHED_INTERVAL:-2}
START_TIMEOUT=${SLURM_CLUSTER_START_TIMEOUT:-180}

CTLD_PORT=$PORT
SLURMD_PORT=$((PORT + 1))
DBD_PORT=$((PORT + 2))
DB_PORT=$((PORT + 3))

ETC=$DIR/etc
LOG=$DIR/log
RUN=$DIR/run
CONF=$ETC/slurm.conf
DBD_CONF=$ETC/slurmdbd.conf
STATE=$DIR/cluster.env # what start set up (nodes, namespaces): stop, status and exec read it back
DB_DATA=$DIR/mysql
DB_RUN=$DIR/mysql-run # owned by the mysql user: socket and pid file of MariaDB
DB_SOCKET=$DB_RUN/mysqld.sock
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm # MariaDB only listens on a loopback address and its socket; this is a test cluster, not a secret
SYSTEM_CONF=/etc/slurm/slurm.conf
NETNS_ETC=/etc/netns # ip netns exec mounts /etc/netns/<namespace>/<file> over /etc/<file>

export SLURM_CONF=$CONF

log() { echo "slurm_cluster: $*"; }
die() {
    echo "slurm_cluster: ERROR: $*" >&2
    exit 1
}
# die_logs MESSAGE: die, pointing at the daemons' logs (for a daemon that failed).
die_logs() {
    echo "slurm_cluster: logs are in $LOG (slurmctld.log slurmd*.log slurmdbd.log mariadb.log)" >&2
    die "$@"
}

# --- the nodes: names, addresses and where each daemon runs -------------------------------------------------------

# recorded KEY: the value start recorded in $STATE ("" when there is none).
recorded() { sed -n "s/^$1=//p" "$STATE" 2>/dev/null || true; }

# Read back what start recorded, so that stop/status/exec act on the cluster that runs, whatever the environment.
load_state() {
    [[ -s $STATE ]] || return 0
    NODES=$(recorded nodes)
    SUBNET=$(recorded subnet)
    NAME=$(recorded name)
}

multi_node() { [[ $NODES =~ ^[0-9]+$ && $NODES -ge 2 ]]; }
head_ns() { echo "$NAME-head"; }          # namespace and host name of the head node (controller, accounting)
node_name() { echo "$NAME-n$1"; }         # namespace, host name and SLURM NodeName of node $1 (1-based)
head_addr() { echo "$SUBNET.1"; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }
head_where() { if multi_node; then head_ns; else echo -; fi; } # where slurmctld, slurmdbd and MariaDB run (- = here)
controller_addr() { if multi_node; then head_addr; else echo 127.0.0.1; fi; }
slurmd_name() { if multi_node; then echo "slurmd@$1"; else echo slurmd; fi; } # pid file name of node $1's slurmd
node_names() {
    if multi_node; then
        local i
        for ((i = 1; i <= NODES; i++)); do node_name "$i"; done
    else
        echo localhost # the node's SLURM name; its address is 127.0.0.1 whatever the machine's hostname is
    fi
}
namespaces() {
    multi_node || return 0
    head_ns
    local i
    for ((i = 1; i <= NODES; i++)); do node_name "$i"; done
}

# client CMD...: run a SLURM client where it reaches the daemons (the head namespace of a multi-node cluster;
# anywhere for one node).
client() {
    if multi_node; then
        nsenter --net="/run/netns/$(head_ns)" "$@"
    else
        "$@"
    fi
}

check_settings() {
    local value
    [[ $NODES =~ ^[0-9]+$ && $NODES -ge 1 && $NODES -le 200 ]] ||
        die "--nodes must be a number from 1 to 200; got '$NODES'"
    for value in PORT OVERSUBSCRIBE KILL_WAIT REQUEUE_DELAY SCHED_INTERVAL START_TIMEOUT; do
        [[ ${!value} =~ ^[0-9]+$ ]] || die "SLURM_CLUSTER_$value must be a whole number; got '${!value}'"
    done
    if multi_node; then
        [[ $NAME =~ ^[a-z][a-z0-9]{0,15}$ ]] ||
            die "SLURM_CLUSTER_NAME='$NAME' names hosts and namespaces of a multi-node cluster: use 1-16 lower-case letters and digits, starting with a letter"
        [[ $SUBNET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
            die "SLURM_CLUSTER_SUBNET must be the first three octets of a /24 (e.g. 10.217.0); got '$SUBNET'"
    fi
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it starts munged as the munge user and daemons as root)"
    local tool
    for tool in slurmctld slurmd slurmdbd sacctmgr sinfo sacct mariadbd mariadb-install-db munged; do
        command -v "$tool" >/dev/null || die "'$tool' not found; run .ci/install_cluster.sh first"
    done
    if multi_node; then
        for tool in ip nsenter unshare mount hostname; do
            command -v "$tool" >/dev/null || die "'$tool' not found (a multi-node cluster needs iproute2, util-linux, mount and hostname)"
        done
    fi
}

# --- daemons ------------------------------------------------------------------------------------------------------

# pid_alive NAME: true when $RUN/NAME.pid names a live process that runs NAME's program and was started for this
# folder: every daemon inherits the SLURM_CONF exported above, so a recycled pid, or another cluster's daemon, never
# counts (and is never stopped). NAME may carry the node after an @ (slurmd@stereo-n1).
pid_alive() {
    local file=$RUN/$1.pid pid program=${1%@*}
    [[ $program == mariadb ]] && program=mariadbd
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$program" &&
        tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF"
}

# on_host NS: sets ON_HOST to the command prefix that runs a command as if on host NS: in its network namespace,
# under its host name (own UTS namespace), with /etc/netns/NS/hosts and /etc/netns/NS/slurm mounted over /etc/hosts
# and /etc/slurm (own mount namespace). Not `ip netns exec`: that also mounts a fresh /sys without /sys/fs/cgroup,
# and slurmd refuses to start without it. nsenter, unshare and bash -c exec (no fork): the command keeps the pid.
on_host() {
    # shellcheck disable=SC2016 # $0, $1 and $@ belong to the inner bash
    ON_HOST=(nsenter --net="/run/netns/$1" unshare --mount --propagation slave --uts bash -c
        'hostname "$0" && mount --bind "$1/hosts" /etc/hosts && mount --bind "$1/slurm" /etc/slurm && shift && exec "$@"'
        "$1" "$NETNS_ETC/$1")
}

# start_daemon NAME HOST CMD...: run CMD (a daemon in the foreground) in its own session, detached from this shell
# and its process group, stdout/stderr to $LOG/NAME.out; its pid goes to $RUN/NAME.pid. HOST "-" runs it right
# here; otherwise on that host of a multi-node cluster (on_host).
start_daemon() {
    local name=$1 host=$2 out=$LOG/${1/@/-}.out
    shift 2
    local -a where=()
    if [[ $host != - ]]; then
        on_host "$host"
        where=("${ON_HOST[@]}")
    fi
    # The inner bash writes its own pid and then execs the daemon, so the pid file holds the daemon's pid.
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner bash
    setsid "${where[@]}" bash -c 'echo $$ > "$0"; exec "$@"' "$RUN/$name.pid" "$@" >>"$out" 2>&1 </dev/null &
    local i
    for i in $(seq 50); do # the pid file appears within milliseconds
        [[ -s $RUN/$name.pid ]] && return 0
        sleep 0.1
    done
    die_logs "$name did not start (see $out)"
}

# wait_for DAEMON WHAT CMD...: retry CMD once a second until it succeeds or START_TIMEOUT passes; stop early when
# DAEMON (a name with a pid file, or - for none) has exited, with the end of its output.
wait_for() {
    local daemon=$1 what=$2 i output
    shift 2
    for ((i = 0; i < START_TIMEOUT; i++)); do
        if output=$("$@" 2>&1); then
            return 0
        fi
        if [[ $daemon != - ]] && ! pid_alive "$daemon"; then
            tail -n 5 "$LOG/${daemon/@/-}.out" "$LOG/${daemon/@/-}.log" 2>/dev/null >&2 || true
            die_logs "$daemon exited while waiting for $what"
        fi
        sleep 1
    done
    echo "slurm_cluster: last output of '$*':" >&2
    echo "$output" | tail -n 5 >&2
    die_logs "timed out after ${START_TIMEOUT}s waiting for $what"
}

# Readiness checks for wait_for.
node_state() { client sinfo -h -N -n "$1" -o %T 2>/dev/null; }
node_registered() {
    local state
    state=$(node_state "$1")
    [[ -n $state && $state != unknown* ]]
}
node_usable() { [[ $(node_state "$1") =~ ^(idle|mixed|allocated) ]]; }
controller_up() { client scontrol ping 2>/dev/null | grep -q UP; }
munge_works() { munge -n </dev/null | unmunge >/dev/null 2>&1; }

# --- the private network of a multi-node cluster -------------------------------------------------------------------

# A namespace that exists but that no start of this cluster recorded belongs to someone else: never adopt it.
check_namespaces_free() {
    local ns ours
    ours=" $(recorded namespaces) "
    for ns in $(namespaces); do
        if [[ -e /run/netns/$ns && $ours != *" $ns "* ]]; then
            die "network namespace '$ns' exists but was not created by the cluster in $DIR; choose another SLURM_CLUSTER_NAME or remove it (ip netns del $ns)"
        fi
    done
}

write_state() {
    mkdir -p "$DIR"
    local created_etc=${CREATED_NETNS_ETC:-$(recorded created_netns_etc)}
    cat >"$STATE.tmp" <<EOF
nodes=$NODES
name=$NAME
subnet=$SUBNET
namespaces=$(namespaces | tr '\n' ' ')
created_netns_etc=${created_etc:-0}
EOF
    mv "$STATE.tmp" "$STATE"
}

# The head namespace holds a bridge (br0, address SUBNET.1); node i's namespace holds eth0 (SUBNET.<10+i>), one end
# of a veth pair whose other end is a port of that bridge. Nothing is added to the machine's own network namespace.
setup_network() {
    local head i node hosts
    head=$(head_ns)
    check_namespaces_free
    if [[ ! -d $NETNS_ETC ]]; then
        mkdir -p "$NETNS_ETC"
        CREATED_NETNS_ETC=1
    fi
    write_state # before creating anything, so that a start that fails half-way is still cleaned up by stop

    hosts="127.0.0.1 localhost"$'\n'"$(head_addr) $head"
    for ((i = 1; i <= NODES; i++)); do hosts+=$'\n'"$(node_addr "$i") $(node_name "$i")"; done
    for node in $(namespaces); do
        [[ -e /run/netns/$node ]] || ip netns add "$node" || die "could not create network namespace $node (ip netns add)"
        # IPv4 only: no link-local IPv6 addresses appear on the interfaces below (/proc/sys/net is the namespace's).
        # shellcheck disable=SC2016 # $0 belongs to the inner bash
        nsenter --net="/run/netns/$node" bash -c 'for f in all default; do echo 1 >"$0/$f/disable_ipv6"; done' \
            /proc/sys/net/ipv6/conf 2>/dev/null || true # a kernel without IPv6 has no such files
        ip -n "$node" link set lo up
        mkdir -p "$NETNS_ETC/$node/slurm"
        echo "$hosts" >"$NETNS_ETC/$node/hosts"
        ln -sfn "$CONF" "$NETNS_ETC/$node/slurm/slurm.conf"
    done
    if ! ip -n "$head" link show br0 >/dev/null 2>&1; then
        ip -n "$head" link add br0 type bridge || die "could not create a bridge in namespace $head"
        ip -n "$head" addr add "$(head_addr)/24" dev br0
    fi
    ip -n "$head" link set br0 up
    for ((i = 1; i <= NODES; i++)); do
        node=$(node_name "$i")
        if ! ip -n "$node" link show eth0 >/dev/null 2>&1; then
            ip -n "$head" link add "veth$i" type veth peer name eth0 netns "$node" ||
                die "could not create the veth pair of $node"
            ip -n "$head" link set "veth$i" master br0
            ip -n "$node" addr add "$(node_addr "$i")/24" dev eth0
        fi
        ip -n "$head" link set "veth$i" up
        ip -n "$node" link set eth0 up
    done
}

# Kill what is left in our namespaces (job steps of a job that outlived the daemons), then delete them: their
# interfaces go with them. Only the namespaces recorded by start are touched.
remove_network() {
    local ns pids i
    for ns in $(recorded namespaces); do
        [[ -e /run/netns/$ns ]] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        if [[ -n ${pids// /} ]]; then
            log "ending processes left in namespace $ns: $pids"
            # shellcheck disable=SC2086 # one argument per pid
            kill -TERM $pids 2>/dev/null || true
            for i in $(seq 50); do
                [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break
                sleep 0.1
            done
            # shellcheck disable=SC2046 # one argument per pid
            kill -KILL $(ip netns pids "$ns" 2>/dev/null) 2>/dev/null || true
        fi
        ip netns del "$ns" || log "could not delete namespace $ns"
        rm -rf "${NETNS_ETC:?}/$ns"
    done
    if [[ $(recorded created_netns_etc) == 1 ]]; then
        rmdir "$NETNS_ETC" 2>/dev/null || true # only when empty: another tool may have put its namespaces there
    fi
    if [[ -n $(recorded namespaces) ]]; then
        log "removed namespaces $(recorded namespaces)"
        # Forget them: namespaces of these names created later belong to whoever created them.
        sed -i 's/^namespaces=.*/namespaces=/' "$STATE"
    fi
}

# --- configs ------------------------------------------------------------------------------------------------------

write_configs() {
    mkdir -p "$ETC" "$LOG" "$RUN" "$DIR/state" "$DIR/spool"
    # Hardware as slurmd itself detects it, so the node is never drained for a config mismatch.
    local hw cpus boards sockets cores threads memory
    hw=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    boards=$(sed -n 's/.* Boards=\([0-9]*\).*/\1/p' <<<"$hw")
    sockets=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
    cores=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
    threads=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
    memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $cpus && -n $memory ]] || die "could not parse 'slurmd -C' output: $hw"
    local hardware="CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$memory"

    local oversubscribe="OverSubscribe=FORCE:$OVERSUBSCRIBE" task_prolog=""
    [[ $OVERSUBSCRIBE -le 1 ]] && oversubscribe="OverSubscribe=NO"
    if [[ $OVERSUBSCRIBE -gt 1 ]]; then
        # Jobs share cores here: their OpenMP threads sleep while waiting instead of spinning (a task prolog's
        # "export" lines reach every task). Four 2-thread trainings on 2 cores ran 40x slower spinning.
        printf '#!/bin/sh\necho "export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}"\n' >"$ETC/task_prolog.sh"
        chmod 755 "$ETC/task_prolog.sh"
        task_prolog="TaskProlog=$ETC/task_prolog.sh"
    fi

    # What differs between one node on the loopback and N nodes in namespaces.
    local controller controller_addr slurmd_files task_plugin nodes_lines partition_nodes i
    if multi_node; then
        controller=$(head_ns)
        controller_addr=$(head_addr)
        slurmd_files="SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmdPidFile=$RUN/slurmd-%n.daemon.pid
SlurmdLogFile=$LOG/slurmd-%n.log"
        # Every node is the whole machine: binding tasks to "core 0 of their node" would put the first task of
        # every node on the same physical core. The kernel spreads them instead.
        task_plugin="# The nodes share the machine's cores: no binding, or the first task of every node would get core 0.
TaskPlugin=task/none"
        nodes_lines=""
        for ((i = 1; i <= NODES; i++)); do
            nodes_lines+="NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") $hardware State=UNKNOWN"$'\n'
        done
        partition_nodes="$NAME-n[1-$NODES]"
    else
        controller=$(hostname -s) # slurmctld and slurmdbd refuse to start unless their configured host is this machine
        controller_addr=127.0.0.1
        slurmd_files="SlurmdSpoolDir=$DIR/spool/slurmd
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmdLogFile=$LOG/slurmd.log"
        task_plugin="TaskPlugin=task/affinity"
        nodes_lines="NodeName=localhost NodeAddr=127.0.0.1 $hardware State=UNKNOWN"$'\n'
        partition_nodes=localhost
    fi

    cat >"$CONF.tmp" <<EOF
# Generated by launch/slurm_cluster.sh; edits are overwritten on the next start.
ClusterName=$NAME
SlurmctldHost=$controller($controller_addr)
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (SLURM's default: 120 s).
AuthInfo=cred_expire=$REQUEUE_DELAY
# Bind to the configured addresses, never to all interfaces (NoCtldInAddrAny is slurmctld's switch).
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$DIR/state
$slurmd_files
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups without systemd: track processes by parent pid.
ProctrackType=proctrack/linuxproc
$task_plugin
$task_prolog
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Test pending jobs every few seconds (SLURM's default: 60 s), so a requeued job restarts promptly.
SchedulerParameters=sched_interval=$SCHED_INTERVAL,bf_interval=$SCHED_INTERVAL
MpiDefault=none
# Refuse at submission what can never run here (e.g. more CPUs than the node has) instead of pending forever.
EnforcePartLimits=ALL
# A node that was stopped with the cluster comes back idle on the next start.
ReturnToService=2
MailProg=/bin/true
# Jobs may be requeued (scontrol requeue; submitit requeues on its timeout/preemption signal).
JobRequeue=1
# At the time limit (and on scancel/requeue) tasks get SIGTERM, then SIGKILL KillWait seconds later.
KillWait=$KILL_WAIT
OverTimeLimit=0
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$controller_addr
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
${nodes_lines}PartitionName=$PARTITION Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP $oversubscribe
EOF
    mv "$CONF.tmp" "$CONF"

    # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF; it insists on mode 600. MariaDB is on the
    # loopback of the host that runs slurmdbd (the machine, or the head namespace).
    (
        umask 077
        cat >"$DBD_CONF" <<EOF
# Generated by launch/slurm_cluster.sh; edits are overwritten on the next start.
AuthType=auth/munge
DbdHost=$controller
DbdAddr=$controller_addr
DbdPort=$DBD_PORT
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.daemon.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    )
}

# --- start --------------------------------------------------------------------------------------------------------

start_munge() {
    if [[ -S /run/munge/munge.socket.2 ]] && munge_works; then
        return 0 # a munged already answers (ours, another cluster's or the system's): its socket serves every namespace
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        chown munge:munge /etc/munge
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    log "starting munged"
    # munged forks into the background itself and writes /run/munge/munged.pid.
    runuser -u munge -- munged --log-file=/var/log/munge/munged.log || die_logs "munged failed (/var/log/munge/munged.log)"
    wait_for - "munged" munge_works
    cp /run/munge/munged.pid "$RUN/munged.pid" # so that stop ends the munged this script started
}

start_mariadb() {
    if pid_alive mariadb; then
        return 0
    fi
    mkdir -p "$DB_RUN"
    chown mysql:mysql "$DB_RUN"
    touch "$LOG/mariadb.log"
    chown mysql:mysql "$LOG/mariadb.log"
    if [[ ! -d $DB_DATA/mysql ]]; then
        log "initialising MariaDB in $DB_DATA"
        rm -rf "$DB_DATA"
        mkdir -p "$DB_DATA"
        chown mysql:mysql "$DB_DATA"
        mariadb-install-db --no-defaults --datadir="$DB_DATA" --user=mysql --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
            die_logs "mariadb-install-db failed (see $LOG/mariadb-install.log)"
    fi
    log "starting MariaDB on 127.0.0.1:$DB_PORT$(multi_node && echo " of namespace $(head_ns)")"
    # --no-defaults: ignore /etc/mysql so a system MariaDB's settings (datadir, port) never leak in.
    start_daemon mariadb "$(head_where)" mariadbd --no-defaults --datadir="$DB_DATA" --user=mysql \
        --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCKET" --pid-file="$DB_RUN/mariadbd.pid" \
        --log-error="$LOG/mariadb.log" --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900
    wait_for mariadb "MariaDB (socket $DB_SOCKET)" mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
    mariadb --no-defaults --socket="$DB_SOCKET" -u root <<EOF || die_logs "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    local attempt i
    for attempt in 1 2 3; do
        if ! pid_alive slurmdbd; then
            log "starting slurmdbd on $(controller_addr):$DBD_PORT"
            start_daemon slurmdbd "$(head_where)" slurmdbd -D
        fi
        # The first start creates the accounting tables, which takes a while on a slow machine. slurmdbd exits when
        # MariaDB does not take its connection yet (seen once in the test suite, after MariaDB was killed): start it
        # again.
        for ((i = 0; i < START_TIMEOUT; i++)); do
            client sacctmgr -n list cluster >/dev/null 2>&1 && break 2
            pid_alive slurmdbd || break
            sleep 1
        done
        ((i < START_TIMEOUT)) || die_logs "timed out after ${START_TIMEOUT}s waiting for slurmdbd (sacctmgr)"
        ((attempt < 3)) || die_logs "slurmdbd exited while starting, three times"
        log "slurmdbd exited while starting (see $LOG/slurmdbd.log); starting it again"
        sleep 2
    done
    if [[ -z $(client sacctmgr -n -P list cluster format=cluster where cluster="$NAME") ]]; then
        log "registering cluster '$NAME' in the accounting database"
        client sacctmgr -i add cluster "$NAME" >/dev/null || die_logs "sacctmgr add cluster $NAME failed"
    fi
}

start_slurm() {
    local restarted=0
    if ! pid_alive slurmctld; then
        log "starting slurmctld on $(controller_addr):$CTLD_PORT"
        start_daemon slurmctld "$(head_where)" slurmctld -D -f "$CONF"
        restarted=1
    fi
    wait_for slurmctld "slurmctld (scontrol ping)" controller_up
    local node daemon i=0
    for node in $(node_names); do # start every node's slurmd, then wait for them
        i=$((i + 1))
        daemon=$(slurmd_name "$node")
        pid_alive "$daemon" && continue
        if multi_node; then
            log "starting slurmd for node $node ($(node_addr "$i"), namespace $node)"
            mkdir -p "$DIR/spool/slurmd-$node" # SlurmdSpoolDir=.../slurmd-%n
            start_daemon "$daemon" "$node" slurmd -D -N "$node" -f "$CONF"
        else
            log "starting slurmd for node $node"
            start_daemon "$daemon" - slurmd -D -N "$node" -f "$CONF"
        fi
    done
    for node in $(node_names); do
        daemon=$(slurmd_name "$node")
        wait_for "$daemon" "node $node to register" node_registered "$node"
        case $(node_state "$node") in
        down* | drain* | fail*)
            # Left over from an unclean stop; the daemons are fresh, so the node is usable again.
            log "node $node was '$(node_state "$node")'; resuming it"
            client scontrol update nodename="$node" state=resume || true
            ;;
        esac
        wait_for "$daemon" "node $node to be idle or in use" node_usable "$node"
    done
    # `stop` cancels every job, so jobs that a freshly started controller recovers from its saved state are left
    # from an end without `stop` (a reboot, a machine image taken while jobs ran). Their processes are gone, yet
    # slurmctld would hold their CPUs for up to half an hour before noticing: cancel them now.
    if ((restarted)); then cancel_leftover_jobs; fi
    wait_for slurmctld "sacct" client sacct -n -X -S now-1minutes
}

# cancel_leftover_jobs: scancel every job the controller knows and wait (up to a minute) until none is left.
cancel_leftover_jobs() {
    local jobs i
    jobs=$(client squeue -h -o %A | tr '\n' ' ')
    [[ -n ${jobs// /} ]] || return 0
    log "cancelling jobs left from before the last start (their processes are gone): $jobs"
    # shellcheck disable=SC2086 # one argument per job id
    client scancel $jobs || true
    for i in $(seq 60); do
        [[ -z $(client squeue -h -o %A) ]] && return 0
        sleep 1
    done
    log "warning: still in the queue after 60 s: $(client squeue -h -o '%A %T' | tr '\n' ' ')"
}

link_system_conf() {
    if [[ ! -e $SYSTEM_CONF && ! -L $SYSTEM_CONF ]]; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -s "$CONF" "$SYSTEM_CONF"
    elif [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
        : # ours already
    elif [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == */etc/slurm.conf && ! -e $SYSTEM_CONF ]]; then
        ln -sfn "$CONF" "$SYSTEM_CONF" # a dangling link left by a purged cluster in another folder
    else
        log "note: $SYSTEM_CONF exists and is not ours; clients need SLURM_CONF=$CONF"
    fi
}

unlink_system_conf() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

# A state folder holds one cluster. `start` without --nodes starts the one recorded there again; a start that asks
# for another size, name or subnet while the recorded one is still there (daemons or namespaces) is refused.
check_same_cluster() {
    local nodes name subnet ns live=""
    nodes=$(recorded nodes)
    name=$(recorded name)
    subnet=$(recorded subnet)
    pid_alive slurmctld && live="runs"
    for ns in $(recorded namespaces); do
        [[ -e /run/netns/$ns ]] && live=${live:-"has namespaces left"}
    done
    if [[ -z $nodes ]]; then # nothing recorded: a fresh folder, or a one-node cluster of an older version of this script
        [[ -z $live || $NODES -eq 1 ]] || die "a 1-node cluster runs in $DIR; stop it first ($0 stop) or use another SLURM_CLUSTER_DIR"
        return 0
    fi
    [[ -n $NODES_GIVEN ]] || NODES=$nodes
    if [[ -n $live && ($nodes != "$NODES" || ($nodes -ge 2 && $name/$subnet != "$NAME/$SUBNET")) ]]; then
        die "$DIR $live: a $nodes-node cluster '$name'; stop it first ($0 stop) or use another SLURM_CLUSTER_DIR"
    fi
}

cmd_start() {
    check_settings
    need_root
    check_same_cluster
    mkdir -p "$DIR" "$RUN" "$LOG"
    if multi_node; then
        setup_network
    else
        write_state
    fi
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    multi_node || link_system_conf
    log "up: $(client sinfo -h -o '%P %a %D nodes (%N), %C CPUs (A/I/O/T), state %T' | tr '\n' ' ')"
    if multi_node; then
        log "clients run on the head node: $0 exec sinfo   (or: ip netns exec $(head_ns) ...)"
    else
        log "clients: export SLURM_CONF=$CONF"
    fi
}

# --- stop, status, exec -------------------------------------------------------------------------------------------

# stop_daemons NAME...: SIGTERM the daemons of $RUN/NAME.pid all at once, SIGKILL those still there after 30 s.
stop_daemons() {
    local name i
    local -a pids=()
    for name in "$@"; do
        if pid_alive "$name"; then
            log "stopping $name"
            pids+=("$(<"$RUN/$name.pid")")
        fi
        rm -f "$RUN/$name.pid"
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for i in $(seq 300); do
        kill -0 "${pids[@]}" 2>/dev/null || return 0 # true while any of them lives
        sleep 0.1
    done
    log "pids ${pids[*]} ignored SIGTERM for 30 s; killing what is left"
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

# munge_used_elsewhere: true when SLURM daemons of another folder (another cluster) run on this machine; munged
# serves them all. Only reads /proc: nothing is signalled by name.
munge_used_elsewhere() {
    local proc
    for proc in /proc/[0-9]*; do
        [[ $(cat "$proc/comm" 2>/dev/null) =~ ^(slurmctld|slurmd|slurmdbd)$ ]] || continue
        tr '\0' '\n' <"$proc/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" || return 0
    done
    return 1
}

cmd_stop() {
    need_root
    if [[ ! -d $RUN ]]; then
        log "nothing to stop ($RUN does not exist)"
        return 0
    fi
    if pid_alive slurmctld; then
        local jobs
        jobs=$(client squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086 # one argument per job id
            client scancel $jobs || true
            local i
            for i in $(seq $((KILL_WAIT + 15))); do
                [[ -z $(client squeue -h -o %A 2>/dev/null) ]] && break
                sleep 1
            done
        fi
    fi
    # The node daemons (every one this folder ever started) and the controller together; then accounting, whose
    # daemon the controller reports to until it exits; then munged if this folder started it and no other cluster's
    # daemons still need it.
    local file
    local -a names=(slurmctld)
    for file in "$RUN"/slurmd.pid "$RUN"/slurmd@*.pid; do
        [[ -e $file ]] && names+=("$(basename "$file" .pid)")
    done
    stop_daemons "${names[@]}"
    stop_daemons slurmdbd
    stop_daemons mariadb
    if pid_alive munged && munge_used_elsewhere; then
        log "leaving munged running: another cluster's SLURM daemons use it"
        rm -f "$RUN/munged.pid"
    else
        stop_daemons munged
    fi
    remove_network
    unlink_system_conf
    log "stopped (state kept in $DIR; 'purge' deletes it)"
}

cmd_purge() {
    cmd_stop
    case $DIR in
    / | /tmp | /tmp/ | "$HOME" | "") die "refusing to delete SLURM_CLUSTER_DIR=$DIR" ;;
    esac
    rm -rf "$DIR"
    log "deleted $DIR"
}

cmd_status() {
    local name ns address ok=0
    for name in munged mariadb slurmdbd slurmctld $(for ns in $(node_names); do slurmd_name "$ns"; done); do
        if pid_alive "$name"; then
            echo "$name: running (pid $(<"$RUN/$name.pid"))"
        else
            echo "$name: not started by this script"
        fi
    done
    for ns in $(namespaces); do
        address=$(ip -n "$ns" -br -4 addr show 2>/dev/null | awk '$1 != "lo" {print $1, $3}' | tr '\n' ' ' || true)
        echo "namespace $ns: ${address:-missing}"
    done
    if [[ -e $CONF ]] && (! multi_node || [[ -e /run/netns/$(head_ns) ]]) &&
        client sinfo -h -N -o '%N %T %C' 2>/dev/null | sed 's/^/node: /' && client sacct -n -X -S now-1minutes >/dev/null 2>&1; then
        echo "cluster: up (SLURM_CONF=$CONF$(multi_node && echo ", clients on the head node: $0 exec CMD"))"
    else
        echo "cluster: not answering"
        ok=1
    fi
    return $ok
}

# exec CMD...: CMD on the head node with SLURM_CONF set: in the head namespace (with its host name) for a
# multi-node cluster, else right here.
cmd_exec() {
    [[ $# -gt 0 ]] || die "usage: $0 exec CMD [ARG...]"
    [[ -e $CONF ]] || die "no cluster in $DIR (no $CONF); start one first"
    if multi_node; then
        [[ $(id -u) -eq 0 ]] || die "exec enters the head node's namespaces: run it as root"
        [[ -e /run/netns/$(head_ns) ]] || die "the cluster in $DIR is not running (no namespace $(head_ns)); start it first"
        on_host "$(head_ns)"
        exec "${ON_HOST[@]}" "$@"
    fi
    exec "$@"
}

parse_start_options() {
    while [[ $# -gt 0 ]]; do
        case $1 in
        --nodes) [[ $# -ge 2 ]] || die "--nodes needs a number"; NODES=$2 NODES_GIVEN=1; shift 2 ;;
        --nodes=*) NODES=${1#--nodes=} NODES_GIVEN=1; shift ;;
        *) die "unknown option '$1' (start takes --nodes N)" ;;
        esac
    done
}

command=${1:-}
[[ $# -gt 0 ]] && shift
case $command in
start)
    parse_start_options "$@"
    cmd_start
    ;;
stop) load_state && cmd_stop ;;
purge) load_state && cmd_purge ;;
status) load_state && cmd_status ;;
env) echo "export SLURM_CONF=$CONF" ;;
exec) load_state && cmd_exec "$@" ;;
help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*)
    echo "usage: $0 start [--nodes N]|stop|status|purge|env|exec CMD...|help" >&2
    exit 2
    ;;
esac
