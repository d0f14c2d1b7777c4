#!/usr/bin/env bash
# Installs what the build and the integration tests need besides the services and the Rust toolchain: make and a C
# compiler (build-essential: libgit2-sys, libssh2-sys, openssl-sys and ring build C code), git (file://, git daemon,
# http-backend), lighttpd with TLS (the HTTP(S) front for `git http-backend`), openssl (test certificates),
# OpenSSH's sshd and ssh-keygen (the ssh:// test server and its keys), libssl-dev + pkg-config (git2's HTTPS and
# SSH support build against OpenSSL; libssh2 itself is vendored), cmake (builds the vendored zlib-ng) and promtool (Debian's prometheus package, for the
# alerting rules), Chromium and its ChromeDriver (the UI's browser test) and, from the npm registry, axe-core (the
# accessibility check that test runs in the browser). Idempotent; uses Debian packages.
set -euo pipefail
log() { printf '[test-deps] %s\n' "$*" >&2; }

missing=()
command -v make >/dev/null || missing+=(make)
command -v cc >/dev/null || missing+=(build-essential)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v git >/dev/null || missing+=(git)
[ -x /usr/sbin/lighttpd ] || [ -x /usr/local/sbin/lighttpd ] || missing+=(lighttpd)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v cmake >/dev/null || missing+=(cmake)
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
ls /usr/lib/lighttpd/mod_openssl.so >/dev/null 2>&1 || missing+=(lighttpd-mod-openssl)
# promtool checks the alerting rules (`make test-ops`); the package's server is never started (policy-rc.d below).
command -v promtool >/dev/null || missing+=(prometheus)
# The UI's browser test drives Debian's Chromium through ChromeDriver (WebDriver), and checks pages with axe-core.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v npm >/dev/null || missing+=(npm)
AXE_VERSION=4.10.3
AXE_DIR=${GITFLEET_AXE_DIR:-$HOME/.cache/gitfleet-ci/axe-core-$AXE_VERSION}
npm_deps() {
    if [ ! -f "$AXE_DIR/node_modules/axe-core/axe.min.js" ]; then
        log "installing axe-core@$AXE_VERSION from the npm registry into $AXE_DIR"
        mkdir -p "$AXE_DIR"
        npm install --prefix "$AXE_DIR" --no-audit --no-fund --silent "axe-core@$AXE_VERSION" >/dev/null
    fi
}
# PyPI: pynautobot, Nautobot's own Python client, which the Nautobot-compatible API is tested with.
PYNAUTOBOT_VERSION=3.2.0
python_deps() {
    local python
    python=$(command -v python3) || { log "error: python3 is needed for the pynautobot test"; exit 1; }
    if ! "$python" -c "import pynautobot, sys; sys.exit(pynautobot.__version__ != '$PYNAUTOBOT_VERSION')" 2>/dev/null; then
        log "installing pynautobot==$PYNAUTOBOT_VERSION from PyPI"
        "$python" -m pip install -q --disable-pip-version-check "pynautobot==$PYNAUTOBOT_VERSION" >/dev/null 2>&1 \
            || "$python" -m pip install -q --disable-pip-version-check --break-system-packages "pynautobot==$PYNAUTOBOT_VERSION" >/dev/null
    fi
}

if [ "${#missing[@]}" = 0 ]; then
    log "all Debian packages present"
    python_deps
    npm_deps
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "error: installing ${missing[*]} needs root"; exit 1; }
log "installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
# policy-rc.d keeps the packages' services from starting: the tests start their own servers on loopback.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ "$created_policy" = 1 ] && rm -f "$policy"
python_deps
npm_deps
log "done"
