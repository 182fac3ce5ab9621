#!/bin/sh
# Makes state-v2.db: the state file a tether of schema version 2 writes.
# Run with that release's binary (see README):
#
#   tests/unit/data/make_state_v2.sh /path/to/tether tests/unit/data/state-v2.db
#
# Three consumers: "gen" runs its 40 events to the end; "held" takes 30
# events, is paused (a flag kept across restarts) and reset to seq 12,
# position 12 with a reason (a cursor_resets row); "sub" is still running
# when tether stops, so its cursor is whatever the last commit held.
set -eu

bin=$1
out=$2
work=$(mktemp -d)
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
sock="$work/api.sock"

cat >"$work/tether.ini" <<EOF
[daemon]
state = state.db
checkpoint_interval = 20ms
status_interval = 0
socket = $sock

[consumer gen]
source = generate
rate = 200
count = 40
sink = file:gen.ndjson

[consumer held]
source = generate
rate = 200
count = 30
sink = file:held.ndjson

[consumer sub]
source = generate
rate = 50
count = 1000
sink = file:sub.ndjson
EOF

cd "$work"
ulimit -f 10240
"$bin" run -c tether.ini 2>tether.log &
pid=$!

# Polls a command until it succeeds, for at most 20 s.
wait_until() {
  i=0
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 200 ] || { echo "timed out: $*" >&2; cat tether.log >&2; exit 1; }
    sleep 0.1
  done
}

seq_of() {
  "$bin" cursors get "$1" generate -s "$sock" | awk 'NR == 2 { print $4 }'
}

wait_until test -S "$sock"
wait_until sh -c "[ \"\$('$bin' cursors get gen generate -s '$sock' | awk 'NR == 2 { print \$4 }')\" = 40 ]"
wait_until sh -c "[ \"\$('$bin' cursors get held generate -s '$sock' | awk 'NR == 2 { print \$4 }')\" = 30 ]"
"$bin" consumers pause held -s "$sock"
"$bin" cursors reset held generate --seq 12 --position 12 \
  --reason "fixture: replay from 12" -s "$sock"
wait_until sh -c "[ \"\$('$bin' cursors get sub generate -s '$sock' | awk 'NR == 2 { print \$4 }')\" -ge 5 ]"
echo "gen $(seq_of gen), held $(seq_of held), sub $(seq_of sub)"
kill -TERM "$pid"
wait "$pid"
pid=
[ ! -e state.db-wal ] || { echo "state.db-wal left behind" >&2; exit 1; }
cd - >/dev/null
cp "$work/state.db" "$out"
