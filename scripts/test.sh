#!/bin/sh
# The test command: installs what is missing, builds tether three ways and
# runs every suite, then prints one line "N passed, N failed".
#
#   build/        gcc, the normal build: unit, fuzz-corpus and integration
#   build-asan/   gcc with AddressSanitizer + UBSan: the same suites
#   build-fuzz/   clang + libFuzzer: each fuzz target replays its corpus and
#                 mutates for a bounded number of runs
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh test

setup() { # dir, extra meson args...
  dir=$1
  shift
  if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

setup build
setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
CC=clang setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
  -Db_lundef=false

meson compile -C build >/dev/null
meson compile -C build-asan >/dev/null
# Only the fuzz targets: the rest of that build is what build-asan covers.
meson compile -C build-fuzz $(sed -n "s/^  '\([a-z_]*\)' : .*/fuzz_\1/p" \
  tests/fuzz/meson.build) >/dev/null

status=0
meson test -C build --no-rebuild --print-errorlogs \
  --suite unit --suite fuzz --suite integration || status=1
meson test -C build-asan --no-rebuild --print-errorlogs \
  --suite unit --suite fuzz --suite integration || status=1
meson test -C build-fuzz --no-rebuild --print-errorlogs --suite fuzz ||
  status=1

python3 scripts/count_results.py build build-asan build-fuzz || status=1
exit $status
