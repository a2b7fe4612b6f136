#!/usr/bin/env bash
# Stop the single-node CI SLURM started by ci/slurm/start.sh.
# Only kills the daemons recorded in their pid files (never by name).
#   --keep-munge   leave munged running (used by start.sh on config change)
#   --purge        also remove slurm state, logs and the generated slurm.conf
set -uo pipefail

keep_munge=0; purge=0
for a in "$@"; do
    case "$a" in
        --keep-munge) keep_munge=1 ;;
        --purge) purge=1 ;;
        *) echo "usage: $0 [--keep-munge] [--purge]" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null && exec sudo -n bash "$0" "$@"; echo "must run as root" >&2; exit 2; }

log() { echo "[slurm-ci] $*" >&2; }

stop_pidfile() { # name pidfile
    local name=$1 pf=$2 pid
    [[ -s "$pf" ]] || return 0
    pid=$(cat "$pf")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop after 10 s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
            sleep 0.5
        fi
    fi
    rm -f "$pf"
}

# Cancel our jobs first so slurmstepd/job processes do not linger.
if command -v scancel >/dev/null && [[ -s /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    scancel --full --quiet --partition "${SLURM_CI_PARTITION:-ci}" 2>/dev/null || true
    sleep 1
fi
stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
[[ $keep_munge -eq 1 ]] || stop_pidfile munged /run/munge/munged.pid

if [[ $purge -eq 1 ]]; then
    if grep -qF "# managed-by: mmlu-flavors ci/slurm/start.sh" /etc/slurm/slurm.conf 2>/dev/null; then
        rm -f /etc/slurm/slurm.conf
    fi
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log
fi
log "stopped"
exit 0
