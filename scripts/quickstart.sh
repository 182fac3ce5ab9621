#!/bin/sh
# Installs what is missing, builds a release tether and runs it on its
# embedded default: a generate source writing events to stdout, with state in
# ./.tether/. Ctrl-C drains, commits the cursor and exits; run it again and
# the numbering resumes where it stopped.
#
#   scripts/quickstart.sh              the embedded default
#   scripts/quickstart.sh pocketbase   the PocketBase demo: the reference
#                                      server on loopback with a record
#                                      created every second, consumed into
#                                      ./.tether/orders.ndjson
#
# The tests run the demo with TETHER_BIN (a tether already built: no
# install, no build) and TETHER_DEMO_DIR (where its files go).
set -eu
cd "$(dirname "$0")/.."
if [ -n "${TETHER_BIN:-}" ]; then
  tether=$TETHER_BIN
else
  if [ "${1:-}" = pocketbase ]; then
    scripts/deps.sh demo
  else
    scripts/deps.sh build
  fi
  [ -f build-release/build.ninja ] ||
    meson setup build-release --buildtype=release >/dev/null
  meson compile -C build-release tether >/dev/null
  tether=./build-release/daemon/tether
fi

if [ "${1:-}" != pocketbase ]; then
  echo "quickstart: tether runs; from another terminal here: $tether status" >&2
  exec "$tether" run "$@"
fi

# The PocketBase demo. The server and the writer stop with this script.
dir=${TETHER_DEMO_DIR:-.tether}
mkdir -p "$dir"
fifo=$dir/pb-server.out
rm -f "$fifo"
mkfifo "$fifo"
python3 tests/servers/pocketbase_server.py --port 0 >"$fifo" &
server=$!
writer=""
cleanup() {
  [ -n "$writer" ] && kill "$writer" 2>/dev/null
  kill "$server" 2>/dev/null
  rm -f "$fifo"
}
trap cleanup EXIT INT TERM
read -r line <"$fifo"
port=${line##*:}
base="http://127.0.0.1:$port"
ctl() { curl -sf -X POST -H 'Content-Type: application/json' -d "$2" \
  "$base$1" >/dev/null; }
ctl /_pb/collections '{"name":"orders","listRule":null,"fields":["total","status"]}'
(
  n=0
  while :; do
    n=$((n + 1))
    ctl /_pb/create "{\"collection\":\"orders\",\"records\":[{\"total\":$n,\"status\":\"paid\"}]}" ||
      exit 0
    sleep 1
  done
) &
writer=$!
cat >"$dir/pocketbase-demo.ini" <<EOF
[daemon]
state = $dir/pocketbase-demo.db
socket = $dir/tether.sock
status_interval = 5s

[upstream pb]
type = pocketbase
url = $base
auth = superuser
identity = admin@example.com
password = \${PB_PASSWORD:-secret-password-1}

[consumer orders]
upstream = pb
collection = orders
filter = status = "paid"
settle = 500ms
sink = file:$dir/orders.ndjson
EOF
echo "quickstart: PocketBase on $base, a new order every second" >&2
echo "quickstart: from another terminal here: tail -f $dir/orders.ndjson" >&2
echo "quickstart:                         or: $tether status -s $dir/tether.sock" >&2
"$tether" run -c "$dir/pocketbase-demo.ini"
