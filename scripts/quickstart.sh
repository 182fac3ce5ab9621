#!/bin/sh
# Installs what is missing, builds a release tether and runs it on its
# embedded default: a generate source writing events to stdout, with state in
# ./.tether/. Ctrl-C drains, commits the cursor and exits; run it again and
# the numbering resumes where it stopped.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh build
[ -f build-release/build.ninja ] ||
  meson setup build-release --buildtype=release >/dev/null
meson compile -C build-release tether >/dev/null
echo "quickstart: tether runs; from another terminal here: ./build-release/daemon/tether status" >&2
exec ./build-release/daemon/tether run "$@"
