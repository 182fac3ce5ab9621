#!/bin/sh
# Installs the Debian packages tether needs, only those that are missing.
#
#   scripts/deps.sh build   compiler, meson and the libraries tether links
#   scripts/deps.sh test    build + pytest, clang and libFuzzer for the tests
#
# Runs apt-get (as root, or through sudo) only when something is missing, so
# a second run costs a few dpkg queries.
set -eu

build="meson ninja-build pkg-config gcc libc6-dev libuv1-dev libsqlite3-dev
  libjansson-dev libinih-dev"
test="$build python3 python3-pytest clang libclang-rt-14-dev"

case "${1:-build}" in
  build) want=$build ;;
  test) want=$test ;;
  *) echo "usage: scripts/deps.sh build|test" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
  as_root=""
elif command -v sudo >/dev/null 2>&1; then
  as_root="sudo"
else
  echo "deps: missing$missing; run as root or install sudo" >&2
  exit 1
fi
$as_root apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq \
  --no-install-recommends $missing >/dev/null
