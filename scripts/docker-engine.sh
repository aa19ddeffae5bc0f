#!/usr/bin/env bash
# Make sure a Docker Engine answers, for the staging workshop and the tests.
#
#   scripts/docker-engine.sh start   prints `export DOCKER_HOST=...` for the engine to use
#   scripts/docker-engine.sh stop    stops the private engine, if this script started one
#   scripts/docker-engine.sh status
#   scripts/docker-engine.sh run [--stop] CMD...   runs CMD with DOCKER_HOST set; with --stop,
#                                                  stops the engine afterwards if this run started it
#
# An engine that already answers (DOCKER_HOST or the default socket) is used as it is.
# Otherwise, as root, a private dockerd is started with its own socket and data root, using
# the flags that work on machines without iptables or a default bridge, and the fastest storage
# driver the kernel allows there. Only that private
# engine is ever stopped by `stop`.
set -euo pipefail

state_dir=${COMFY_WRAPUP_ENGINE_DIR:-/var/lib/comfy-wrapup/engine}
run_dir=/run/comfy-wrapup
socket="unix://$run_dir/docker.sock"
pidfile="$run_dir/dockerd.pid"
log="$state_dir/dockerd.log"

# overlay2 where the kernel mounts overlayfs on the data root (a container is created in
# milliseconds), else vfs, which copies the whole image for every container (works everywhere).
storage_driver() {
    local probe
    probe=$(mktemp -d "$state_dir/overlay-probe.XXXXXX")
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay2
    else
        echo vfs
    fi
    rm -rf "$probe"
}

answers() { DOCKER_HOST="$1" timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
    if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
        echo "export DOCKER_HOST=$DOCKER_HOST"; return
    fi
    if answers unix:///var/run/docker.sock; then
        echo "export DOCKER_HOST=unix:///var/run/docker.sock"; return
    fi
    if answers "$socket"; then
        echo "export DOCKER_HOST=$socket"; return
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "No Docker Engine answers and this is not root: start Docker, or set DOCKER_HOST" >&2
        exit 1
    fi
    command -v dockerd >/dev/null || { echo "dockerd is missing: run 'make setup' (installs docker.io)" >&2; exit 1; }
    mkdir -p "$state_dir/data" "$run_dir/exec"
    driver=$(storage_driver)
    # setsid and closed descriptors: the daemon must outlive this script and hold none of its
    # caller's files: not make's pipes, and not a lock its caller took (`flock LOCK make test`), which
    # the daemon would otherwise keep held for as long as it runs.
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        exec setsid dockerd \
            --host "$socket" --pidfile "$pidfile" \
            --data-root "$state_dir/data" --exec-root "$run_dir/exec" \
            --storage-driver="$driver" --iptables=false --bridge=none \
            </dev/null >"$log" 2>&1
    ) &
    for _ in $(seq 1 60); do
        if answers "$socket"; then echo "export DOCKER_HOST=$socket"; return; fi
        sleep 0.5
    done
    echo "The private dockerd did not answer within 30 s; its log is $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
}

stop() {
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.5
    done
    echo "dockerd (pid $pid) did not stop within 30 s" >&2
    exit 1
}

run() {
    local stop_after=false started_here=false
    if [ "${1:-}" = --stop ]; then stop_after=true; shift; fi
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || started_here=true
    eval "$(start)"
    [ -f "$pidfile" ] || started_here=false
    export DOCKER_HOST
    local status=0
    "$@" || status=$?
    if $stop_after && $started_here; then stop; fi
    return $status
}

case "${1:-}" in
    start) start ;;
    run) shift; run "$@" ;;
    stop) stop ;;
    status) if answers "${DOCKER_HOST:-$socket}"; then echo running; else echo stopped; exit 3; fi ;;
    *) echo "usage: $0 start|stop|status|run [--stop] CMD..." >&2; exit 2 ;;
esac
