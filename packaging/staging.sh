#!/bin/sh
# SPDX-License-Identifier: MPL-2.0
#
# Staging: run a second mozpool instance (its own data directory and port) on the virtual
# rack or on a spare real relay board, then run `mozpool check` against it.
# Idempotent: a staging instance already running with the same directory is reused.
# See docs/staging.md.
#
#   packaging/staging.sh [--simulate N | --config FILE] [--port P] [--dir DIR]
#                        [--bin PATH] [--device NAME] [--timeout SECS] [start|check|stop|status]
#
# Exit status: that of `mozpool check` (0 pass, 1 failed step, 3 unreachable), 2 for a usage
# or start-up problem.

set -eu

SIMULATE=""
CONFIG=""
PORT="${MOZPOOL_STAGING_PORT:-8181}"
DIR="${MOZPOOL_STAGING_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/mozpool-staging}"
BIN="${MOZPOOL_BIN:-}"
DEVICE=""
TIMEOUT=600
ACTION=run

die() { echo "staging: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --simulate) SIMULATE="${2:?--simulate needs N}"; shift 2 ;;
        --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
        --port) PORT="${2:?--port needs a number}"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a directory}"; shift 2 ;;
        --bin) BIN="${2:?--bin needs a path}"; shift 2 ;;
        --device) DEVICE="${2:?--device needs a name}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
        start|check|stop|status) ACTION="$1"; shift ;;
        -h|--help) sed -n '3,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done

# Never share production's state or port.
case "$DIR" in
    /var/lib/mozpool|/var/lib/mozpool/) die "--dir must not be production's /var/lib/mozpool" ;;
esac
[ "$PORT" = 8080 ] && die "port 8080 is production's; pick another with --port"
if [ -z "$SIMULATE" ] && [ -z "$CONFIG" ]; then SIMULATE=4; fi

if [ -z "$BIN" ]; then
    here="$(cd "$(dirname "$0")/.." && pwd)"
    if [ -x "$here/target/debug/mozpool" ]; then BIN="$here/target/debug/mozpool"
    elif command -v mozpool >/dev/null 2>&1; then BIN="$(command -v mozpool)"
    else die "no mozpool binary: pass --bin PATH or build with cargo build"; fi
fi

URL="http://127.0.0.1:$PORT"
PIDFILE="$DIR/mozpool.pid"
LOG="$DIR/serve.log"

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

how_to_stop() {
    echo "staging: instance at $URL (pid $(cat "$PIDFILE"), data in $DIR/data, log $LOG)"
    echo "staging: stop it with: $0 --dir $DIR stop    (or: kill $(cat "$PIDFILE"))"
}

stop() {
    if running; then
        pid="$(cat "$PIDFILE")"
        kill "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        kill -0 "$pid" 2>/dev/null && die "pid $pid did not stop within 30 s (a hung hardware call can delay shutdown); kill -9 it if needed"
        echo "staging: stopped pid $pid"
    else
        echo "staging: not running"
    fi
    rm -f "$PIDFILE"
}

start() {
    mkdir -p "$DIR/data"
    if running; then
        echo "staging: already running (pid $(cat "$PIDFILE")); reusing it"
    else
        rm -f "$PIDFILE"
        set -- serve --data-dir "$DIR/data" --listen "127.0.0.1:$PORT"
        if [ -n "$SIMULATE" ]; then
            set -- "$@" --simulate "$SIMULATE"
            if [ -z "$CONFIG" ]; then
                # A rack that settles in seconds; timeouts are scaled to match.
                CONFIG="$DIR/staging.toml"
                cat >"$CONFIG" <<EOF
# Written by packaging/staging.sh: the staging instance on the virtual rack.
[server]
name = "staging"

[simulate]
time_scale = 0.01
boot_time_ms = 300
bootloader_window_ms = 1000
EOF
            fi
        fi
        [ -n "$CONFIG" ] && set -- "$@" --config "$CONFIG"
        RUST_LOG="${RUST_LOG:-info}" nohup "$BIN" "$@" >>"$LOG" 2>&1 &
        echo $! >"$PIDFILE"
        echo "staging: started $BIN $*"
    fi
    i=0
    until "$BIN" version --url "$URL" >/dev/null 2>&1; do
        running || { tail -20 "$LOG" >&2; die "the instance exited; log above ($LOG)"; }
        i=$((i + 1))
        [ $i -gt 300 ] && die "no answer on $URL after 30 s (log: $LOG)"
        sleep 0.1
    done
    # Wait (bounded) for a device to finish its first self-test, so the check has one.
    i=0
    until "$BIN" device list --details --url "$URL" 2>/dev/null | grep -q '"state": "ready"'; do
        i=$((i + 1))
        if [ $i -gt "$TIMEOUT" ]; then
            echo "staging: no device became ready within ${TIMEOUT}s; running the check anyway" >&2
            break
        fi
        sleep 1
    done
}

check() {
    if [ -n "$DEVICE" ]; then set -- --device "$DEVICE"; else set -- --any; fi
    status=0
    "$BIN" check --url "$URL" --timeout "$TIMEOUT" "$@" || status=$?
    return $status
}

case "$ACTION" in
    stop) stop ;;
    status)
        if running; then how_to_stop; "$BIN" version --url "$URL"; else echo "staging: not running"; exit 1; fi ;;
    start) start; how_to_stop ;;
    check) running || die "not running (start it first)"; check ;;
    run)
        start
        status=0
        check || status=$?
        how_to_stop
        exit $status ;;
esac
