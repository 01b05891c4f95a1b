#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and demos: munge, MariaDB, slurmdbd, slurmctld
# and slurmd, all started without systemd and listening on 127.0.0.1 only.
#
#   launch/slurm_cluster.sh start    # idempotent: starts what is not running, waits until the node is idle
#   launch/slurm_cluster.sh status   # exit 0 when the cluster answers (sinfo + sacct), 1 otherwise
#   launch/slurm_cluster.sh stop     # cancels every job, stops the daemons this script started
#   launch/slurm_cluster.sh purge    # stop, then delete the state folder (accounting database included)
#   launch/slurm_cluster.sh env      # prints the export line that points SLURM clients at this cluster
#
# Needs root and the packages of .ci/install_cluster.sh. Settings (environment variables, with defaults):
#   SLURM_CLUSTER_DIR=/tmp/stereo_exp_slurm   state, spool, logs, generated slurm.conf and the MariaDB data
#   SLURM_CLUSTER_NAME=stereo                 ClusterName (registered once in the accounting database)
#   SLURM_CLUSTER_PORT=6817                   slurmctld; slurmd, slurmdbd and MariaDB use the next three ports
#   SLURM_CLUSTER_PARTITION=debug             the one (default) partition
#   SLURM_CLUSTER_OVERSUBSCRIBE=4             jobs that may share one core (OverSubscribe=FORCE:N); 1 = no sharing
#   SLURM_CLUSTER_KILL_WAIT=10                seconds between SIGTERM and SIGKILL at the time limit/cancel/requeue
#   SLURM_CLUSTER_REQUEUE_DELAY=10            seconds a requeued job waits before it may start again (cred_expire)
#   SLURM_CLUSTER_SCHED_INTERVAL=2            seconds between scheduling passes over pending jobs
#   SLURM_CLUSTER_START_TIMEOUT=180           seconds to wait for each daemon to answer
#
# Clients (sbatch, sinfo, sacct, submitit) find the cluster through SLURM_CONF=$SLURM_CLUSTER_DIR/etc/slurm.conf;
# when /etc/slurm/slurm.conf does not exist, start also links it there so that plain `sinfo` works, and stop
# removes that link again. An existing /etc/slurm/slurm.conf that is not ours is never touched.
# start rewrites the configs every time, but daemons that already run keep theirs: changed settings take effect
# after stop + start. docs/CLUSTER.md records how jobs, signals and requeue behave on this cluster.
set -euo pipefail

DIR=${SLURM_CLUSTER_DIR:-/tmp/stereo_exp_slurm}
NAME=${SLURM_CLUSTER_NAME:-stereo}
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
NODE=localhost # the node's SLURM name; its address is 127.0.0.1 whatever the machine's hostname is
HOST=$(hostname -s) # slurmctld and slurmdbd refuse to start unless their configured host is this machine

ETC=$DIR/etc
LOG=$DIR/log
RUN=$DIR/run
CONF=$ETC/slurm.conf
DBD_CONF=$ETC/slurmdbd.conf
DB_DATA=$DIR/mysql
DB_RUN=$DIR/mysql-run # owned by the mysql user: socket and pid file of MariaDB
DB_SOCKET=$DB_RUN/mysqld.sock
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm # MariaDB only listens on 127.0.0.1 and its socket; this is a test cluster, not a secret
SYSTEM_CONF=/etc/slurm/slurm.conf

export SLURM_CONF=$CONF

log() { echo "slurm_cluster: $*"; }
die() {
    echo "slurm_cluster: ERROR: $*" >&2
    echo "slurm_cluster: logs are in $LOG (slurmctld.log slurmd.log slurmdbd.log mariadb.log munged.log)" >&2
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it starts munged as the munge user and daemons as root)"
    local tool
    for tool in slurmctld slurmd slurmdbd sacctmgr sinfo sacct mariadbd mariadb-install-db munged; do
        command -v "$tool" >/dev/null || die "'$tool' not found; run .ci/install_cluster.sh first"
    done
}

# pid_alive NAME: true when $RUN/NAME.pid names a live process that runs NAME's program (not a recycled pid).
pid_alive() {
    local file=$RUN/$1.pid pid program=$1
    [[ $program == mariadb ]] && program=mariadbd
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$program"
}

# start_daemon NAME CMD...: run CMD (a daemon in the foreground) in its own session, detached from this shell
# and its process group, stdout/stderr to $LOG/NAME.out; its pid goes to $RUN/NAME.pid.
start_daemon() {
    local name=$1
    shift
    # The inner bash writes its own pid and then execs the daemon, so the pid file holds the daemon's pid.
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner bash
    setsid bash -c 'echo $$ > "$0"; exec "$@"' "$RUN/$name.pid" "$@" >>"$LOG/$name.out" 2>&1 </dev/null &
    local i
    for i in $(seq 50); do # the pid file appears within milliseconds
        [[ -s $RUN/$name.pid ]] && return 0
        sleep 0.1
    done
    die "$name did not start (see $LOG/$name.out)"
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
            tail -n 5 "$LOG/$daemon.out" "$LOG/$daemon.log" 2>/dev/null >&2 || true
            die "$daemon exited while waiting for $what"
        fi
        sleep 1
    done
    echo "slurm_cluster: last output of '$*':" >&2
    echo "$output" | tail -n 5 >&2
    die "timed out after ${START_TIMEOUT}s waiting for $what"
}

# Readiness checks for wait_for.
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null; }
node_registered() {
    local state
    state=$(node_state)
    [[ -n $state && $state != unknown* ]]
}
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated) ]]; }
controller_up() { scontrol ping 2>/dev/null | grep -q UP; }
munge_works() { munge -n </dev/null | unmunge >/dev/null 2>&1; }

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

    local oversubscribe="OverSubscribe=FORCE:$OVERSUBSCRIBE"
    [[ $OVERSUBSCRIBE -le 1 ]] && oversubscribe="OverSubscribe=NO"

    cat >"$CONF.tmp" <<EOF
# Generated by launch/slurm_cluster.sh; edits are overwritten on the next start.
ClusterName=$NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (SLURM's default: 120 s).
AuthInfo=cred_expire=$REQUEUE_DELAY
# Bind to the configured addresses (127.0.0.1), never to all interfaces (NoCtldInAddrAny is slurmctld's switch).
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups without systemd: track processes by parent pid, bind tasks to cores with sched_setaffinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
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
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP $oversubscribe
EOF
    mv "$CONF.tmp" "$CONF"

    # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF; it insists on mode 600.
    (
        umask 077
        cat >"$DBD_CONF" <<EOF
# Generated by launch/slurm_cluster.sh; edits are overwritten on the next start.
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
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

start_munge() {
    if [[ -S /run/munge/munge.socket.2 ]] && munge_works; then
        return 0 # a munged already answers (ours or the system's)
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
    runuser -u munge -- munged --log-file=/var/log/munge/munged.log || die "munged failed (/var/log/munge/munged.log)"
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
            die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
    fi
    log "starting MariaDB on 127.0.0.1:$DB_PORT"
    # --no-defaults: ignore /etc/mysql so a system MariaDB's settings (datadir, port) never leak in.
    start_daemon mariadb mariadbd --no-defaults --datadir="$DB_DATA" --user=mysql \
        --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCKET" --pid-file="$DB_RUN/mariadbd.pid" \
        --log-error="$LOG/mariadb.log" --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900
    wait_for mariadb "MariaDB (socket $DB_SOCKET)" mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
    mariadb --no-defaults --socket="$DB_SOCKET" -u root <<EOF || die "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if ! pid_alive slurmdbd; then
        log "starting slurmdbd on 127.0.0.1:$DBD_PORT"
        start_daemon slurmdbd slurmdbd -D
    fi
    # The first start creates the accounting tables, which takes a while on a slow machine.
    wait_for slurmdbd "slurmdbd (sacctmgr)" sacctmgr -n list cluster
    if [[ -z $(sacctmgr -n -P list cluster format=cluster where cluster="$NAME") ]]; then
        log "registering cluster '$NAME' in the accounting database"
        sacctmgr -i add cluster "$NAME" >/dev/null || die "sacctmgr add cluster $NAME failed"
    fi
}

start_slurm() {
    if ! pid_alive slurmctld; then
        log "starting slurmctld on 127.0.0.1:$CTLD_PORT"
        start_daemon slurmctld slurmctld -D -f "$CONF"
    fi
    wait_for slurmctld "slurmctld (scontrol ping)" controller_up
    if ! pid_alive slurmd; then
        log "starting slurmd for node $NODE"
        start_daemon slurmd slurmd -D -N "$NODE" -f "$CONF"
    fi
    wait_for slurmd "node $NODE to register" node_registered
    case $(node_state) in
    down* | drain* | fail*)
        # Left over from an unclean stop; the daemons are fresh, so the node is usable again.
        log "node was '$(node_state)'; resuming it"
        scontrol update nodename="$NODE" state=resume || true
        ;;
    esac
    wait_for slurmd "node $NODE to be idle or in use" node_usable
    wait_for slurmctld "sacct" sacct -n -X -S now-1minutes
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

cmd_start() {
    need_root
    mkdir -p "$DIR"
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    link_system_conf
    log "up: $(sinfo -h -o '%P %a %D nodes, %C CPUs (A/I/O/T), state %T')"
    log "clients: export SLURM_CONF=$CONF"
}

# stop_pid NAME: SIGTERM the daemon of $RUN/NAME.pid, SIGKILL it if it is still there after 30 s.
stop_pid() {
    local name=$1 pid i
    pid_alive "$name" || {
        rm -f "$RUN/$name.pid"
        return 0
    }
    pid=$(<"$RUN/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
}

cmd_stop() {
    need_root
    if [[ ! -d $RUN ]]; then
        log "nothing to stop ($RUN does not exist)"
        return 0
    fi
    if pid_alive slurmctld; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086 # one argument per job id
            scancel $jobs || true
            local i
            for i in $(seq $((KILL_WAIT + 15))); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 1
            done
        fi
    fi
    local name
    for name in slurmd slurmctld slurmdbd mariadb munged; do
        if pid_alive "$name"; then
            log "stopping $name"
        fi
        stop_pid "$name"
    done
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
    local name ok=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if pid_alive "$name"; then
            echo "$name: running (pid $(<"$RUN/$name.pid"))"
        else
            echo "$name: not started by this script"
        fi
    done
    if sinfo -h -N -o '%N %T %C' 2>/dev/null | sed 's/^/node: /' && sacct -n -X -S now-1minutes >/dev/null 2>&1; then
        echo "cluster: up (SLURM_CONF=$CONF)"
    else
        echo "cluster: not answering"
        ok=1
    fi
    return $ok
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
purge) cmd_purge ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$CONF" ;;
*)
    echo "usage: $0 start|stop|status|purge|env" >&2
    exit 2
    ;;
esac
