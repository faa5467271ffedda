#!/usr/bin/env bash
# Install the Debian packages Archipelag uses whose program is missing, in one apt-get run.
#
#   scripts/debian-packages.sh docker.io chromium
#
# docker.io gives the Docker engine (dockerd) for container workloads; chromium the browser the web app's tests
# drive. Nothing to do when each program is there; installing needs root and apt-get. Exit 1 when a package is
# still missing afterwards (the caller says what goes without it). A lock keeps two callers from running apt-get
# at once (dpkg would refuse the second).
set -euo pipefail

program_of() {
    case "$1" in
        docker.io) echo dockerd ;;
        chromium) echo /usr/bin/chromium ;;
        *) echo "no program known for the package $1" >&2; return 2 ;;
    esac
}

present() { command -v "$(program_of "$1")" >/dev/null 2>&1; }

missing() {
    local package
    for package in "$@"; do present "$package" || echo "$package"; done
}

for package in "$@"; do program_of "$package" >/dev/null || exit 2; done
[[ -n "$(missing "$@")" ]] || exit 0
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing $(missing "$@" | xargs): installing needs root and apt-get" >&2
    exit 1
fi
LOG="${ARCHIPELAG_APT_LOG:-/var/log/archipelag-apt.log}"
exec 9>/var/lock/archipelag-apt.lock
flock 9
mapfile -t wanted < <(missing "$@")  # again: a caller that held the lock may have installed them meanwhile
(( ${#wanted[@]} )) || exit 0
echo "installing ${wanted[*]} ... (log: $LOG)" >&2
apt-get update -qq >>"$LOG" 2>&1 || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >>"$LOG" 2>&1 || true
status=0
for package in "${wanted[@]}"; do
    present "$package" || { echo "apt-get could not install $package; see $LOG" >&2; status=1; }
done
exit "$status"
