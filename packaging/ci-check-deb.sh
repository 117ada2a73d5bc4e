#!/usr/bin/env bash
# Build the .deb and check it the way a lab controller would use it:
#  1. metadata and contents (binary, unit, sysusers, conffiles, udev rules, maintainer scripts,
#     Recommends: fastboot and adb);
#  2. unpack it into a throwaway root and run the packaged binary with the packaged config
#     (data dir and listen address overridden to temporary values);
#  3. /api/health/, /metrics, `mozpool backup` → stop → `mozpool restore` → start again;
#  4. `systemd-analyze verify` of the unit (and `security`, `systemd-sysusers`) where present.
#
# Usage: packaging/ci-check-deb.sh [--no-build]   (--no-build: reuse target/release/mozpool)
# Needs: cargo-deb (installed if missing), dpkg-deb; optional: systemd-analyze.
# Runs as any user; nothing outside the repository and a temp dir is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d)
SERVICE_PID=
cleanup() {
    if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
log "building the .deb"
if ! command -v cargo-deb >/dev/null 2>&1; then
    cargo install cargo-deb --locked
fi
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
rm -f "$TARGET_DIR"/debian/mozpool_*.deb
if [ "${1:-}" = "--no-build" ]; then
    cargo deb --locked --no-build
else
    cargo deb --locked
fi
DEB=$(ls "$TARGET_DIR"/debian/mozpool_*.deb)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
case "$(basename "$DEB")" in
    "mozpool_${VERSION}"*"_${ARCH}.deb") ;;
    *) fail "unexpected package name $(basename "$DEB") (want mozpool_${VERSION}*_${ARCH}.deb)" ;;
esac
printf '%s: %s bytes\n' "$DEB" "$(stat -c %s "$DEB")"

# ---------------------------------------------------------------------------------------
log "metadata"
dpkg-deb -I "$DEB" | tee "$WORK/info"
dpkg-deb -f "$DEB" Package | grep -qx mozpool || fail "Package is not mozpool"
dpkg-deb -f "$DEB" Depends | grep -q 'libc6' || fail "Depends lacks libc6 (\$auto)"
dpkg-deb -f "$DEB" Architecture | grep -qx "$ARCH" || fail "Architecture is not $ARCH"
for r in fastboot adb; do
    dpkg-deb -f "$DEB" Recommends | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -qx "$r" \
        || fail "Recommends lacks $r"
done
mkdir -p "$WORK/control"
dpkg-deb -e "$DEB" "$WORK/control"
for f in /etc/mozpool/mozpool.toml /etc/default/mozpool; do
    grep -qx "$f" "$WORK/control/conffiles" || fail "$f is not a conffile"
done
for s in postinst prerm postrm; do
    [ -x "$WORK/control/$s" ] || fail "no $s"
    sh -n "$WORK/control/$s" || fail "$s has a syntax error"
    ! grep -q '#DEBHELPER#' "$WORK/control/$s" || fail "$s: #DEBHELPER# not substituted"
done
grep -q 'systemd-sysusers' "$WORK/control/postinst" || fail "postinst does not create the user"
# cargo-deb substitutes every occurrence of the DEBHELPER token, comments included: the
# generated start must appear exactly once.
[ "$(grep -c 'deb-systemd-invoke' "$WORK/control/postinst")" -eq 1 ] \
    || fail "postinst: the generated fragments appear more than once (DEBHELPER token in a comment?)"
# udev reload must come before the generated service start/restart.
udev_line=$(grep -n 'udevadm control --reload-rules' "$WORK/control/postinst" | head -1 | cut -d: -f1)
start_line=$(grep -n 'deb-systemd-invoke' "$WORK/control/postinst" | head -1 | cut -d: -f1)
[ -n "$udev_line" ] && [ -n "$start_line" ] && [ "$udev_line" -lt "$start_line" ] \
    || fail "postinst: udev reload (line ${udev_line:-none}) must precede the service start (line ${start_line:-none})"
grep -q 'udevadm trigger --subsystem-match=usb' "$WORK/control/postinst" \
    || fail "postinst does not re-apply the Android rules to phones already plugged in"
grep -q 'rm -rf /var/lib/mozpool' "$WORK/control/postrm" || fail "postrm does not purge the data"

log "contents"
dpkg-deb -c "$DEB" | tee "$WORK/contents"
for f in ./usr/bin/mozpool \
         ./usr/lib/systemd/system/mozpool.service \
         ./usr/lib/sysusers.d/mozpool.conf \
         ./usr/lib/udev/rules.d/70-mozpool.rules \
         ./usr/lib/udev/rules.d/70-mozpool-android.rules \
         ./usr/lib/modules-load.d/mozpool.conf \
         ./etc/mozpool/mozpool.toml \
         ./etc/default/mozpool \
         ./usr/share/doc/mozpool/operations.md; do
    awk '{print $NF}' "$WORK/contents" | grep -qx "$f" || fail "$f missing from the package"
done

# ---------------------------------------------------------------------------------------
log "unpacking into a throwaway root"
ROOT="$WORK/root"
dpkg -x "$DEB" "$ROOT"
BIN="$ROOT/usr/bin/mozpool"
CONFIG="$ROOT/etc/mozpool/mozpool.toml"
DATA="$WORK/data"
# The packaged config enables [auth] without a token; make one for this check as postinst
# does on a real install (its hash goes into the unpacked copy of the config).
MOZPOOL_TOKEN=$("$BIN" token new ci-check --role admin --append-to "$CONFIG")
export MOZPOOL_TOKEN
printf 'binary: %s bytes\n' "$(stat -c %s "$BIN")"
"$BIN" --version

PORT=$(( 20000 + RANDOM % 20000 ))
URL="http://127.0.0.1:$PORT"

# GET with bash only (no curl on a fresh machine): prints status line, headers and body.
http_get() {
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
    cat <&3
    exec 3<&- 3>&-
}

start_service() {
    # As the unit would run it, minus systemd: packaged config, temp data dir and port.
    "$BIN" serve --config "$CONFIG" --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
        >>"$WORK/service.log" 2>&1 &
    SERVICE_PID=$!
    for _ in $(seq 1 100); do
        if http_get /api/health/ 2>/dev/null | head -1 | grep -q ' 200 '; then
            return 0
        fi
        kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/service.log" >&2; fail "service exited"; }
        sleep 0.1
    done
    cat "$WORK/service.log" >&2
    fail "service did not become healthy"
}

stop_service() {
    kill -TERM "$SERVICE_PID"
    local rc=0
    wait "$SERVICE_PID" || rc=$?
    SERVICE_PID=
    [ "$rc" -eq 0 ] || fail "service exited with $rc on SIGTERM"
}

log "starting the packaged binary"
start_service
http_get /api/health/ | tee "$WORK/health" | tail -1
grep -q '"ok":true' "$WORK/health" || fail "health is not ok"

log "/metrics"
http_get /metrics > "$WORK/metrics"
head -1 "$WORK/metrics" | grep -q ' 200 ' || fail "/metrics status"
grep -qi '^content-type: text/plain; version=0.0.4' "$WORK/metrics" || fail "/metrics content type"
for m in mozpool_devices mozpool_api_request_duration_seconds mozpool_store_commit_duration_seconds \
         mozpool_log_records mozpool_store_file_bytes mozpool_hw_operations_total; do
    grep -q "^# TYPE $m " "$WORK/metrics" || fail "/metrics lacks $m"
done
grep -c '^mozpool_' "$WORK/metrics" | xargs printf '%s samples\n'

log "backup and restore"
"$BIN" device set before-backup --comments "in the backup" --url "$URL" >/dev/null
"$BIN" backup "$WORK/backup.redb" --url "$URL"
"$BIN" device set after-backup --comments "not in the backup" --url "$URL" >/dev/null
if "$BIN" restore "$WORK/backup.redb" --data-dir "$DATA" 2>"$WORK/refused"; then
    fail "restore succeeded while the service was running"
fi
grep -q 'in use' "$WORK/refused" || { cat "$WORK/refused" >&2; fail "restore refusal does not say why"; }
printf 'garbage' > "$WORK/garbage.redb"
if "$BIN" restore "$WORK/garbage.redb" --data-dir "$DATA" 2>/dev/null; then
    fail "a garbage backup was restored"
fi
stop_service
if "$BIN" restore "$WORK/garbage.redb" --data-dir "$DATA" 2>/dev/null; then
    fail "a garbage backup was restored (offline)"
fi
"$BIN" restore "$WORK/backup.redb" --data-dir "$DATA"
ls "$DATA"/mozpool.redb.bak-* >/dev/null || fail "the previous database was not kept"
start_service
devices=$("$BIN" device list --url "$URL")
echo "$devices" | grep -qx before-backup || fail "before-backup lost in the restore"
! echo "$devices" | grep -qx after-backup || fail "after-backup should not be in the restored data"
stop_service

# ---------------------------------------------------------------------------------------
log "systemd"
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers --root="$ROOT" "$ROOT/usr/lib/sysusers.d/mozpool.conf"
    grep -q '^mozpool:' "$ROOT/etc/passwd" || fail "sysusers did not create mozpool"
    grep -q '^dialout:.*mozpool' "$ROOT/etc/group" || fail "mozpool not in dialout"
    grep -q '^gpio:.*mozpool' "$ROOT/etc/group" || fail "mozpool not in gpio"
    echo "sysusers: ok"
else
    echo "systemd-sysusers not available; skipped"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze --version | head -1
    # The unit as packaged, with ExecStart pointing at the unpacked binary (verify checks
    # that it exists and is executable). `--root` is no help: it also wants the root's
    # sysinit.target and friends.
    mkdir -p "$WORK/unit"
    sed "s|^ExecStart=/usr/bin/mozpool|ExecStart=$BIN|" \
        "$ROOT/usr/lib/systemd/system/mozpool.service" > "$WORK/unit/mozpool.service"
    systemd-analyze verify "$WORK/unit/mozpool.service" 2>&1 | tee "$WORK/verify" \
        || fail "systemd-analyze verify failed"
    [ ! -s "$WORK/verify" ] || fail "systemd-analyze verify reported problems"
    echo "systemd-analyze verify: clean"
    systemd-analyze security --offline=yes "$WORK/unit/mozpool.service" 2>/dev/null | tail -1 || true
else
    echo "systemd-analyze not available; unit not verified"
fi
# `udevadm verify` exists from systemd 254 (Debian 12 has 252: skipped there).
if command -v udevadm >/dev/null 2>&1 && udevadm verify --help >/dev/null 2>&1; then
    udevadm verify "$ROOT/usr/lib/udev/rules.d/70-mozpool.rules" \
        "$ROOT/usr/lib/udev/rules.d/70-mozpool-android.rules" || fail "udevadm verify failed"
    echo "udevadm verify: clean"
else
    echo "udevadm verify not available (needs systemd >= 254); rules not verified"
fi

log "the .deb passed"
