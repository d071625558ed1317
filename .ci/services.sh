#!/usr/bin/env bash
# Make sure the services the tests need are here: a Redis answering on
# 127.0.0.1:6379, the nginx binary (the live tests start their own nginx and
# private Redis servers on free ports), Debian's chromium (the browser tests drive
# it with Playwright; no browser is downloaded), node (the client's tests) and npm.
# Idempotent, and silent when all is present.
set -euo pipefail

REDIS_HOST=127.0.0.1
REDIS_PORT=6379
REDIS_LOG=/tmp/redis-6379.log
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

die() { echo "services: $*" >&2; exit 1; }

APT_UPDATED=0
OWN_POLICY=""  # a policy-rc.d this script made, removed on exit whatever happens
trap '[ -z "$OWN_POLICY" ] || rm -f "$OWN_POLICY"' EXIT
apt_install() {  # apt_install PACKAGE... (root only); the packages' services are not started
    [ "$(id -u)" -eq 0 ] || die "$* missing and not root: install it (apt-get install -y $*)"
    echo "services: installing $* (apt-get)"
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        # Keep the packages' postinst from starting their services (nginx on port 80,
        # redis-server on 6379): invoke-rc.d obeys 101 = "action not allowed".
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        OWN_POLICY=$policy
    fi
    local rc=0
    {
        if [ "$APT_UPDATED" -eq 0 ]; then
            apt-get update -qq && APT_UPDATED=1
        fi &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    } || rc=$?
    if [ -n "$OWN_POLICY" ]; then rm -f "$OWN_POLICY"; OWN_POLICY=""; fi
    [ "$rc" -eq 0 ] || die "apt-get install $* failed (exit $rc)"
}

redis_answers() {  # PING 127.0.0.1:6379 and expect +PONG, without needing redis-cli
    local reply
    reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 && head -c 5 <&3' \
        "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null) || return 1
    [ "$reply" = "+PONG" ]
}

# (a) redis-server installed, and a Redis answering on 127.0.0.1:6379.
command -v redis-server >/dev/null || apt_install redis-server
if ! redis_answers; then
    echo "services: starting redis-server on $REDIS_HOST:$REDIS_PORT (log $REDIS_LOG)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /tmp --logfile /tmp/redis-6379.log
    for _ in $(seq 50); do
        redis_answers && break
        sleep 0.1
    done
    redis_answers || { tail -n 20 "$REDIS_LOG" >&2 || true; die "redis-server does not answer on $REDIS_HOST:$REDIS_PORT"; }
fi

# (b) nginx installed (not started: the tests run their own, from nginx.conf).
command -v nginx >/dev/null || apt_install nginx

# (c) chromium for tests/live/test_browser.py, with emoji and CJK fonts for its screenshots.
[ -x /usr/bin/chromium ] || apt_install chromium
dpkg -s fonts-noto-color-emoji fonts-wqy-microhei >/dev/null 2>&1 \
    || apt_install fonts-noto-color-emoji fonts-wqy-microhei

# (d) node for `make js` (node --test tests/js/; no npm packages), and npm for
# `make clients` (npm ci of the pinned SSE clients in tests/clients/).
command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
