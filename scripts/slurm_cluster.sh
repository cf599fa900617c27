#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of the `slurm` launcher preset:
# slurmctld, slurmd, munge, and slurmdbd with MariaDB for accounting (submitit reads job states
# with sacct: without accounting a task that ends without a result, e.g. after scancel, makes
# the launcher wait forever). Debian's packages; no systemd or cgroups needed. Run as root.
#
#   scripts/slurm_cluster.sh start    install the packages if missing, write the config, start
#                                     the daemons that are not running, wait for an idle node
#   scripts/slurm_cluster.sh stop     cancel the cluster's jobs, stop the daemons it started
#   scripts/slurm_cluster.sh status   which daemons run, and sinfo; exit 0 when the node answers
#
# Everything lives under $RNNJAX_SLURM_DIR (default /tmp/rnnjax-slurm): config, state, logs,
# PID files, the database. Clients (sinfo, sbatch, submitit) find the config through
# /etc/slurm/slurm.conf, a link to $RNNJAX_SLURM_DIR/etc/slurm.conf; a slurm.conf there that is
# not this script's is left alone and the script stops.
set -euo pipefail

DIR=${RNNJAX_SLURM_DIR:-/tmp/rnnjax-slurm}
PARTITION=${RNNJAX_SLURM_PARTITION:-debug}
DB_PORT=${RNNJAX_SLURM_DB_PORT:-13306}
CONF=$DIR/etc/slurm.conf
RUN=$DIR/run
LOG=$DIR/log
DB=$DIR/mariadb
NODE=$(hostname -s)
HEADER="# rnnjax scripts/slurm_cluster.sh: a single-node cluster for tests"
export SLURM_CONF=$CONF

say() { echo "slurm_cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The pid in a PID file when that process runs and its command is $2; status 1 otherwise.
running() {  # running PIDFILE COMMAND
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 < "$1")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    echo "$pid"
}

# Retry a command every 0.2 s until it succeeds; status 1 after $1 seconds.
retry() {  # retry SECONDS COMMAND...
    local end; end=$(awk -v a="$(now)" -v s="$1" 'BEGIN { printf "%.1f", a + s }'); shift
    until "$@" >/dev/null 2>&1; do
        awk -v a="$(now)" -v e="$end" 'BEGIN { exit !(a > e) }' && return 1
        sleep 0.2
    done
}

install() {
    local p missing=()
    for p in slurmctld slurmd slurmdbd slurm-client munge mariadb-server; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
    local t0; t0=$(now)
    # Without systemd the packages' init scripts would try to start the daemons with Debian's
    # default config; a policy-rc.d that denies keeps them off (this script starts them).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" > "$LOG/apt-get.log" 2>&1 || die "apt-get install failed, see $LOG/apt-get.log"
    say "installed ${missing[*]} in $(since "$t0") s"
}

# slurm.conf from what slurmd sees of this machine; sets CHANGED=1 when it differs from the
# one the running daemons read.
configure() {
    local node mem
    node=$(slurmd -C | head -n 1)   # NodeName=... CPUs=... Boards=... RealMemory=...
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$node")
    # Leave the system a tenth of the memory.
    node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<< "$node")
    cat > "$CONF.new" <<EOF
$HEADER
ClusterName=rnnjax
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No systemd, no cgroups: processes are tracked by parentage, tasks are not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# A job submitted right after another ended starts at once, not up to 3 s later (the default
# batch_sched_delay, for clusters where jobs come in thousands): each SLURM test waits less.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# submitit's job ignores SIGTERM: KILL soon after (the tests cancel jobs mid-run and wait).
KillWait=1
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    CHANGED=0
    if cmp -s "$CONF" "$CONF.new"; then rm "$CONF.new"; else mv "$CONF.new" "$CONF"; CHANGED=1; fi
    mkdir -p /etc/slurm
    if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" != "$CONF" ]; then
        [ -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ] \
            && die "/etc/slurm/slurm.conf is not this script's; move it away first"
        ln -s "$CONF" /etc/slurm/slurm.conf
    fi
}

start_munge() {
    running "$RUN/munged.pid" munged > /dev/null && return
    if munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
        say "munged: one runs already (not this script's; stop leaves it alone)"; return
    fi
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    retry 10 bash -c 'munge -n | unmunge' || die "munged does not answer, see /var/log/munge"
    cp /run/munge/munged.pid "$RUN/munged.pid"  # stop stops only the munged this script started
}

start_mariadb() {
    running "$RUN/mariadbd.pid" mariadbd > /dev/null && return
    mkdir -p "$DB/data"
    chown -R mysql:mysql "$DB"
    if [ ! -d "$DB/data/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$DB/data" --skip-test-db \
            --auth-root-authentication-method=socket > "$LOG/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed, see $LOG/mariadb-install.log"
    fi
    # setsid: the server outlives this script and does not hold its output open.
    setsid -f /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB/data" \
        --socket="$DB/mysqld.sock" --pid-file="$DB/mysqld.pid" --log-error="$DB/mariadb.log" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --innodb-lock-wait-timeout=900 < /dev/null > /dev/null 2>&1
    retry 30 mariadb --no-defaults --socket="$DB/mysqld.sock" -u root -e 'select 1' \
        || die "mariadbd does not answer, see $DB/mariadb.log"
    cp "$DB/mysqld.pid" "$RUN/mariadbd.pid"
}

start_slurmdbd() {
    running "$RUN/slurmdbd.pid" slurmdbd > /dev/null && return
    local pw
    [ -s "$DIR/etc/db_password" ] \
        || (umask 077; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/etc/db_password")
    pw=$(cat "$DIR/etc/db_password")
    mariadb --no-defaults --socket="$DB/mysqld.sock" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
        ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    # slurmdbd reads slurmdbd.conf beside $SLURM_CONF, and only when SlurmUser alone can read it.
    (umask 077; cat > "$DIR/etc/slurmdbd.conf" <<EOF
$HEADER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pw
StorageLoc=slurm_acct_db
EOF
    )
    slurmdbd
    retry 30 sacctmgr -n show cluster || die "slurmdbd does not answer, see $LOG/slurmdbd.log"
}

start_slurm() {
    if [ "$CHANGED" = 1 ]; then  # a running daemon read the old config
        stop_daemon slurmd; stop_daemon slurmctld
    fi
    running "$RUN/slurmctld.pid" slurmctld > /dev/null || slurmctld
    local fresh=0
    if ! running "$RUN/slurmd.pid" slurmd > /dev/null; then
        fresh=$(date +%s)
        slurmd -N "$NODE"
    fi
    # Wait until the node is idle and, when slurmd was just started, registered by that slurmd:
    # the state saved by an earlier run reads idle before it has.
    local state="" t
    for _ in $(seq 300); do
        state=$(sinfo -h -n "$NODE" -o %T 2> /dev/null || true)
        case $state in
            idle)
                t=$(scontrol show node "$NODE" 2> /dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
                [ "$(date -d "$t" +%s 2> /dev/null || echo 0)" -ge $((fresh - 1)) ] && return ;;
            down* | drain*) scontrol update nodename="$NODE" state=resume 2> /dev/null || true ;;
        esac
        sleep 0.2
    done
    die "node $NODE is '${state:-?}' after 60 s, see $LOG/slurmctld.log and $LOG/slurmd.log"
}

start() {
    [ "$(id -u)" = 0 ] || die "run as root"
    local t0; t0=$(now)
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$RUN" "$LOG"
    install
    local t1; t1=$(now)
    configure
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    say "node $NODE idle in partition $PARTITION, $(since "$t1") s to start ($(since "$t0") s in all)"
}

stop_daemon() {  # stop_daemon NAME: SIGTERM the process in $RUN/NAME.pid, KILL after 30 s
    local pid t0
    if pid=$(running "$RUN/$1.pid" "$1"); then
        t0=$(now)
        kill -TERM "$pid"
        for _ in $(seq 150); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
        [ -d "/proc/$pid" ] && kill -KILL "$pid"
        say "$1: stopped (pid $pid, $(since "$t0") s)"
    fi
    rm -f "$RUN/$1.pid"
}

stop() {
    if running "$RUN/slurmctld.pid" slurmctld > /dev/null; then
        scancel --partition="$PARTITION" 2> /dev/null || true
        retry 20 bash -c '[ -z "$(squeue -h)" ]' || say "jobs still queued: $(squeue -h | wc -l)"
    fi
    # SLURM's daemons first, then its database, then what they all talk through.
    stop_daemon slurmd & stop_daemon slurmctld & wait
    stop_daemon slurmdbd
    stop_daemon mariadbd & stop_daemon munged & wait
}

status() {
    local d pid
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid=$(running "$RUN/$d.pid" "$d"); then echo "$d: running (pid $pid)"
        else echo "$d: not running"; fi
    done
    sinfo
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
