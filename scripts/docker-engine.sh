#!/usr/bin/env bash
# Make a Docker engine available for Archipelag's Docker runtime and its tests, and stop only what we started.
#
#   scripts/docker-engine.sh ensure [HOLDER_PID]   engine answers? done. Else install docker.io (root, Debian)
#                                                 when dockerd is missing, start dockerd, wait until it answers.
#                                                 Prints "running" (someone else's engine) or "started <pid>".
#   scripts/docker-engine.sh stop [HOLDER_PID]     drop HOLDER_PID's lease; stop the dockerd this script started
#                                                 once no live holder is left. Never touches another dockerd.
#   scripts/docker-engine.sh status
#
# Safe to call repeatedly and from several test sessions at once: a lock serialises the calls, and every caller
# that relies on our dockerd holds a lease (a file named by its PID), so one session's `stop` cannot pull the engine
# from under another. State: $ARCHIPELAG_DOCKER_STATE (default /var/run/archipelag-docker): dockerd.pid, leases/,
# dockerd.log.
set -euo pipefail

STATE="${ARCHIPELAG_DOCKER_STATE:-/var/run/archipelag-docker}"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
LEASES="$STATE/leases"
DATA_ROOT="${ARCHIPELAG_DOCKER_DATA_ROOT:-/var/lib/docker}"
WAIT_S="${ARCHIPELAG_DOCKER_WAIT_S:-30}"

answers() { timeout 10 docker info >/dev/null 2>&1; }

alive() {  # a live (not zombie) process
    local pid="$1" state
    [[ -n "$pid" && -r "/proc/$pid/status" ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status")"
    [[ "$state" != "Z" && "$state" != "X" ]]
}

our_pid() { [[ -f "$PIDFILE" ]] && cat "$PIDFILE" || true; }

install_engine() {  # the docker CLI may be a separate client (e.g. /usr/local/bin/docker); dockerd is what we need
    command -v dockerd >/dev/null 2>&1 || bash "$(dirname "$0")/debian-packages.sh" docker.io
}

ensure() {
    local holder="$1" pid
    if answers; then
        pid="$(our_pid)"
        if alive "$pid"; then touch "$LEASES/$holder"; echo "started $pid"; else echo "running"; fi
        return 0
    fi
    install_engine
    [[ "$(id -u)" == 0 ]] || { echo "the engine does not answer and starting dockerd needs root" >&2; return 1; }
    pid="$(our_pid)"
    if ! alive "$pid"; then
        setsid dockerd --data-root "$DATA_ROOT" >>"$LOG" 2>&1 </dev/null 9>&- &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    for _ in $(seq $((WAIT_S * 10))); do
        if answers; then touch "$LEASES/$holder"; echo "started $pid"; return 0; fi
        alive "$pid" || break
        sleep 0.1
    done
    echo "dockerd (pid $pid) did not answer within ${WAIT_S}s; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2 || true
    return 1
}

stop() {
    local holder="$1" pid lease
    rm -f "$LEASES/$holder"
    for lease in "$LEASES"/*; do  # a lease whose holder died is dropped
        [[ -e "$lease" ]] || continue
        alive "$(basename "$lease")" && { echo "kept (held by $(basename "$lease"))"; return 0; }
        rm -f "$lease"
    done
    pid="$(our_pid)"
    if ! alive "$pid"; then rm -f "$PIDFILE"; echo "not ours"; return 0; fi
    kill -TERM "$pid"
    for _ in $(seq 300); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { echo "dockerd (pid $pid) did not stop within 30s" >&2; return 1; }
    rm -f "$PIDFILE"
    echo "stopped $pid"
}

main() {
    local command="${1:-}" holder="${2:-$PPID}"
    mkdir -p "$LEASES"
    exec 9>"$STATE/lock"
    flock 9
    case "$command" in
        ensure) ensure "$holder" ;;
        stop) stop "$holder" ;;
        status) if answers; then echo "answers (ours: $(our_pid || echo none))"; else echo "down"; fi ;;
        *) echo "usage: $0 ensure|stop|status [HOLDER_PID]" >&2; return 2 ;;
    esac
}

main "$@"
