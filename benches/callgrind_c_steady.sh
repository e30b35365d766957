#!/bin/bash
# User-space instructions per echo round trip of a native echo server (e.g. the C examples), in
# the steady state, counted by callgrind (independent of machine load):
#
#   benches/callgrind_c_steady.sh SERVER_BINARY [ARGS...]
#   e.g. benches/callgrind_c_steady.sh c-examples/build/echo_poll
#
# The server is started as `SERVER_BINARY ARGS... 0` (port 0: it must print "listening on PORT"
# with the port it got, as the C examples do). It runs under callgrind; after a 2,000-round-trip
# warm-up the counters are zeroed and echoload runs N round trips on fresh connections, then the
# counters are dumped. Done for N = 20,000 and 60,000: (Ir(60k) - Ir(20k)) / 40,000 leaves out
# connection set-up and teardown. CONNS and SIZE (environment) default to 100 and 1024.
# Needs valgrind and a release build of echoload (cargo build --release -p ringloop-benches).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 SERVER_BINARY [ARGS...]" >&2; exit 2; }
SERVER=$1; shift
CONNS=${CONNS:-100}; SIZE=${SIZE:-1024}
LOAD=$ROOT/target/release/echoload
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# valgrind's gdbserver FIFOs, which a killed server leaves behind, go with the work dir.
VGDB=--vgdb-prefix=$WORK/vgdb

count() {  # count N -> total Ir over N round trips (plus one connection set-up)
    local n=$1 out=$WORK/cg.$1 port=""
    shift
    valgrind --tool=callgrind "$VGDB" --dump-instr=no --callgrind-out-file="$out.%p" \
        "$SERVER" "$@" 0 >"$WORK/log.$n" 2>"$WORK/err.$n" &
    local pid=$!
    for _ in $(seq 600); do
        port=$(sed -n 's/^listening on \([0-9]*\)$/\1/p' "$WORK/log.$n" 2>/dev/null)
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "server did not start:" >&2; cat "$WORK/err.$n" >&2; exit 1; }
    "$LOAD" --port "$port" -c "$CONNS" -s "$SIZE" --requests 2000 --warmup 0 >/dev/null
    callgrind_control "$VGDB" -z "$pid" >/dev/null 2>&1
    "$LOAD" --port "$port" -c "$CONNS" -s "$SIZE" --requests "$n" --warmup 0 >/dev/null
    callgrind_control "$VGDB" -d "$pid" >/dev/null 2>&1
    sleep 1
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then cp "$out".*.1 "$KEEP.$n"; fi
    grep -h '^summary:' "$out".*.1 | awk '{print $2}'
}

a=$(count 20000 "$@")
b=$(count 60000 "$@")
echo "$(basename "$SERVER") ${CONNS}x${SIZE}B: $(( (b - a) / 40000 )) user-space instructions per round trip (steady state)"
