#!/bin/sh
# Installs the Debian packages tether needs, only those that are missing.
#
#   scripts/deps.sh build   compiler, meson and the libraries tether links
#   scripts/deps.sh demo    build + python3 and curl, for the PocketBase demo
#                           of scripts/quickstart.sh
#   scripts/deps.sh test    build + pytest, clang and libFuzzer, and the real
#                           peers the tests run (nginx + nchan, openssl,
#                           curl, the npm packages pinned in tests/peers)
#
# Runs apt-get (as root, or through sudo) only when something is missing, so
# a second run costs a few dpkg queries.
set -eu

build="meson ninja-build pkg-config gcc libc6-dev libuv1-dev libsqlite3-dev
  libjansson-dev libinih-dev node-llhttp libmbedtls-dev ca-certificates"
# The tests also run real peers: nginx with nchan (SSE), openssl s_server
# (TLS), curl (a raw-read baseline), and npm packages from tests/peers.
test="$build python3 python3-pytest clang libclang-rt-14-dev openssl curl
  nginx libnginx-mod-nchan"

demo="$build python3 curl"

set -- "${1:-build}"
case "$1" in
  build) want=$build ;;
  demo) want=$demo ;;
  test) want=$test ;;
  *) echo "usage: scripts/deps.sh build|demo|test" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing="$missing $p"
done
# The npm test peers need node >= 20 (eventsource@4); use the machine's, and
# Debian's only when there is none.
if [ "$1" = test ] && ! command -v node >/dev/null 2>&1; then
  missing="$missing nodejs npm"
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=""
elif command -v sudo >/dev/null 2>&1; then
  as_root="sudo"
elif [ -n "$missing" ]; then
  echo "deps: missing$missing; run as root or install sudo" >&2
  exit 1
fi
if [ -n "$missing" ]; then
  echo "deps: installing$missing" >&2
  $as_root apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq \
    --no-install-recommends $missing >/dev/null
fi

# The npm peers, exactly as the committed lockfile pins them; skipped when
# node_modules already matches it.
if [ "$1" = test ]; then
  peers="$(dirname "$0")/../tests/peers"
  stamp="$peers/node_modules/.tether-lock"
  if ! cmp -s "$peers/package-lock.json" "$stamp" 2>/dev/null; then
    echo "deps: installing the npm test peers" >&2
    (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$peers/package-lock.json" "$stamp"
  fi
fi
