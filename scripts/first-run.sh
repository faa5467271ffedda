#!/usr/bin/env bash
# How long a first run takes from a fresh clone, as CI and a newcomer meet it (the README's "Tests" figures).
#
#   scripts/first-run.sh test [DIR]   clone this checkout's HEAD into DIR and run .ci/run: seconds to green tests
#   scripts/first-run.sh up [DIR]     clone, `make up` on free ports: seconds to /health answering, then to the
#                                     first chat answer (SmolLM2 through /v1/chat/completions); then stops it
#
# DIR defaults to /tmp/archipelag-first-run (removed first). Caches outside the checkout (~/.cache/archipelag: the
# wheels, staged container folders, Zig's cache, the tiny SD model) are used, as CI's clean checkout uses them.
# Only what this script starts is stopped, by PID.
set -euo pipefail
mode="${1:?usage: scripts/first-run.sh test|up [DIR]}"
dir="${2:-/tmp/archipelag-first-run}"
source_repo="$(cd "$(dirname "$0")/.." && pwd)"
start=$(date +%s.%N)
since() { printf '%.0f' "$(echo "$(date +%s.%N) - $start" | bc)"; }

rm -rf "$dir"
git clone -q "$source_repo" "$dir"
cd "$dir"

case "$mode" in
test)
    CI=true bash .ci/run
    echo "first-run: fresh clone to green tests in $(since) s"
    ;;
up)
    free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    port=$(free_port)
    export ARCHIPELAG_RAY_HEAD_PORT=$(free_port)
    # Job control: `make up` runs in a process group of its own, and Ctrl-C (SIGINT), which stops its network,
    # is not ignored as it would be in a background job of a plain script.
    set -m
    make up ARGS="--port $port" >"$dir/up.log" 2>&1 </dev/null &
    up_pid=$!
    trap 'kill -INT -- -"$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null || true' EXIT
    url="http://127.0.0.1:$port"
    until curl -sf "$url/health" >/dev/null && [[ -s .archipelag/api_key ]]; do
        kill -0 "$up_pid" 2>/dev/null || { tail -30 "$dir/up.log"; echo "make up ended before answering" >&2; exit 1; }
        sleep 1
    done
    echo "first-run: fresh clone to /health answering in $(since) s"
    key=$(cat .archipelag/api_key)
    until curl -sf "$url/v1/chat/completions" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
            -d '{"model": "smollm2-135m-instruct", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}' \
            >"$dir/answer.json"; do
        kill -0 "$up_pid" 2>/dev/null || { tail -30 "$dir/up.log"; echo "make up ended before a chat answer" >&2; exit 1; }
        sleep 1
    done
    echo "first-run: fresh clone to the first chat answer in $(since) s: $(head -c 300 "$dir/answer.json")"
    ;;
*)
    echo "usage: scripts/first-run.sh test|up [DIR]" >&2; exit 2 ;;
esac
