#!/usr/bin/env bash
# Start a REAL single-node SLURM cluster on this machine (for CI and tests).
#
#  * installs slurmctld, slurmd, slurm-client and munge via apt-get if missing
#  * writes /etc/slurm/slurm.conf (no cgroup.conf needed) for ONE node named after
#    `hostname -s` with this machine's CPUs and memory, partition "ci" (default)
#  * starts munged, slurmctld and slurmd directly (no systemd needed)
#  * waits until `sinfo` reports the node idle
#
# Idempotent: running it again while everything is up is a no-op (~1 s).  If the
# generated config changed, the daemons are restarted.  Stop with ci/slurm/stop.sh.
#
# No accounting database (slurmdbd) is configured: `sacct` does not work here.
# snakemake-executor-plugin-slurm must therefore be told to read job states
# with `squeue` (--slurm-status-command squeue), which works because finished
# jobs are kept in slurmctld for MinJobAge (see below).  tests/test_slurm.py
# passes that flag (CI_SLURM_ARGS) on top of profiles/slurm.
#
# Exit codes: 0 = cluster up; 2 = cannot run here (not root, no apt, refuses to
# overwrite a foreign slurm.conf); 1 = tried but failed (see logs printed).
#
# Environment knobs:
#   SLURM_CI_PARTITION   partition name                (default: ci)
#   SLURM_CI_MIN_JOB_AGE seconds finished jobs stay visible to squeue (default 3600)
#   SLURM_CI_NO_INSTALL  if 1, never call apt-get
#   SLURM_CI_TIMEOUT     seconds to wait for the node to become idle (default 60)
set -euo pipefail

MARKER="# managed-by: mmlu-flavors ci/slurm/start.sh"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
PARTITION="${SLURM_CI_PARTITION:-ci}"
MIN_JOB_AGE="${SLURM_CI_MIN_JOB_AGE:-3600}"
TIMEOUT="${SLURM_CI_TIMEOUT:-60}"
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

log() { echo "[slurm-ci] $*" >&2; }
die() { local rc=$1; shift; log "ERROR: $*"; exit "$rc"; }

pid_alive() { # pidfile
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

dump_logs() {
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        [[ -f "$f" ]] && { log "---- tail $f"; tail -n 25 "$f" >&2; }
    done
    return 0
}

# ------------------------------------------------------------------ root check
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n -E bash "$0" "$@"
    fi
    die 2 "must run as root (or with password-less sudo) to start SLURM daemons"
fi

# ------------------------------------------------------------------ install
need_install=0
for b in slurmctld slurmd sbatch squeue sinfo munged munge; do
    command -v "$b" >/dev/null || need_install=1
done
if [[ $need_install -eq 1 ]]; then
    [[ "${SLURM_CI_NO_INSTALL:-0}" == 1 ]] && die 2 "SLURM not installed and SLURM_CI_NO_INSTALL=1"
    command -v apt-get >/dev/null || die 2 "SLURM not installed and no apt-get available"
    log "installing slurmctld slurmd slurm-client munge via apt-get ..."
    # Keep package postinst scripts from trying to start services (no systemd).
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >&2 || rc=$?
    [[ $created_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $rc -eq 0 ]] || die 1 "apt-get install failed (rc=$rc)"
fi

# ------------------------------------------------------------------ config
NODE="$(hostname -s 2>/dev/null || true)"
[[ -n "$NODE" ]] || NODE=localhost
# `slurmd -C` prints the hardware as slurmd itself will detect it.
HW="$(slurmd -C | head -n 1)"
get_hw() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(get_hw CPUs); SOCKETS=$(get_hw SocketsPerBoard); CORES=$(get_hw CoresPerSocket)
THREADS=$(get_hw ThreadsPerCore); MEM=$(get_hw RealMemory)
[[ -n "$CPUS" && -n "$MEM" ]] || die 1 "could not parse 'slurmd -C': $HW"
# leave ~5% (min 512 MB) for the OS and the daemons
RESERVE=$(( MEM / 20 > 512 ? MEM / 20 : 512 ))
NODE_MEM=$(( MEM - RESERVE ))

mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge

NEW_CONF="$(cat <<EOF
$MARKER
# Single-node CI cluster. Regenerated on every start; do not edit by hand.
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SwitchType=switch/none
# no cgroups: they are often unavailable/read-only in containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd => sacct does not work; squeue sees finished jobs for MinJobAge s
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=$MIN_JOB_AGE
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} SocketsPerBoard=${SOCKETS:-1} CoresPerSocket=${CORES:-$CPUS} ThreadsPerCore=${THREADS:-1} RealMemory=${NODE_MEM} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)"

config_changed=0
if [[ -f "$CONF" ]]; then
    grep -qF "$MARKER" "$CONF" || die 2 "$CONF exists and was not written by this script; refusing to overwrite it"
    [[ "$(cat "$CONF")" == "$NEW_CONF" ]] || config_changed=1
else
    config_changed=1
fi
if [[ $config_changed -eq 1 ]]; then
    printf '%s\n' "$NEW_CONF" > "$CONF"
    log "wrote $CONF (node $NODE: CPUs=$CPUS RealMemory=$NODE_MEM MB, partition $PARTITION)"
fi
# No cgroup.conf: none of the configured plugins (linuxproc, task/none,
# jobacct_gather/none) uses cgroups.

# ------------------------------------------------------------------ munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        if command -v mungekey >/dev/null; then mungekey --create --force
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    pid_alive "$MUNGE_PID" || rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
    log "starting munged"
    if getent passwd munge >/dev/null; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    for _ in $(seq 20); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.25
    done
    munge -n </dev/null | unmunge >/dev/null || die 1 "munged does not work"
fi

# ------------------------------------------------------------------ daemons
if [[ $config_changed -eq 1 ]] && { pid_alive "$CTLD_PID" || pid_alive "$SLURMD_PID"; }; then
    log "config changed: restarting slurm daemons"
    bash "$(dirname "$0")/stop.sh" --keep-munge
fi

if ! pid_alive "$CTLD_PID"; then
    log "starting slurmctld"
    rm -f "$CTLD_PID"
    # -c: clear saved state (old jobs/node states of a previous CI run)
    slurmctld -c || { dump_logs; die 1 "slurmctld failed to start"; }
fi
for _ in $(seq 40); do
    scontrol ping 2>/dev/null | grep -q "is UP" && break
    sleep 0.25
done
scontrol ping 2>/dev/null | grep -q "is UP" || { dump_logs; die 1 "slurmctld does not answer"; }

if ! pid_alive "$SLURMD_PID"; then
    log "starting slurmd"
    rm -f "$SLURMD_PID"
    slurmd -N "$NODE" || { dump_logs; die 1 "slurmd failed to start"; }
fi

# ------------------------------------------------------------------ wait idle
deadline=$(( SECONDS + TIMEOUT ))
state=""
while (( SECONDS < deadline )); do
    state="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1 || true)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|drained*|fail*)
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) dump_logs; sinfo -N -l >&2 || true; die 1 "node $NODE not idle after ${TIMEOUT}s (state: '${state:-none}')" ;;
esac
log "SLURM is up: node $NODE is $state, partition $PARTITION (default), MinJobAge=${MIN_JOB_AGE}s"
