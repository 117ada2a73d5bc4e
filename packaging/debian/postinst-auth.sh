#!/bin/sh
# mozpool: make the first admin token at installation (issue 11).
#
# Called from packaging/debian/postinst on "configure":
#     /usr/share/mozpool/postinst-auth.sh /etc/mozpool/mozpool.toml
# If the config has an [auth] section and no [[auth.tokens]] entry yet, this makes a random
# admin token named "admin", appends its SHA-256 (never the token) to the config with
# `mozpool token new --append-to` (which refuses to write a config that would not load), and
# prints the token once. Idempotent: upgrades and dpkg-reconfigure do nothing once a token
# exists, and a config without [auth] (an operator who chose an open service) is left alone.
set -eu

CONFIG="${1:-/etc/mozpool/mozpool.toml}"
MOZPOOL="${MOZPOOL:-/usr/bin/mozpool}"

[ -f "$CONFIG" ] || exit 0
grep -Eq '^[[:space:]]*\[auth\][[:space:]]*(#.*)?$' "$CONFIG" || exit 0
if grep -Eq '^[[:space:]]*\[\[auth\.tokens\]\]' "$CONFIG"; then
    exit 0
fi

TOKEN=$("$MOZPOOL" token new admin --role admin --append-to "$CONFIG")

cat >&2 <<MSG

======================================================================
mozpool: access control is on. The first admin token (shown only now):

    $TOKEN

Use it as:  mozpool device list --token TOKEN   (or MOZPOOL_TOKEN=TOKEN)
            curl -H 'Authorization: Bearer TOKEN' http://HOST:8080/api/...
            http://admin:TOKEN@HOST:8080/   (old MozPool clients)
Its hash is in $CONFIG ([[auth.tokens]] name = "admin").
Make more with:  mozpool token new NAME --role read|request|admin
Lost it? Delete that [[auth.tokens]] entry and run this script again:
    $0 $CONFIG
(apt may keep a copy of this message in /var/log/apt/term.log.)
======================================================================

MSG
