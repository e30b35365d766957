#!/bin/bash
# User-space instructions per echo round trip of a Python echo server, in the steady state, counted
# by callgrind (independent of machine load):
#
#   benches/callgrind_steady.sh LOOP MODE [CONNECTIONS] [SIZE]
#   e.g. benches/callgrind_steady.sh ringloop-io_uring protocol 100 1024
#   MODE floor runs servers/pyfloor.py on LOOP's backend (ringloop-io_uring or ringloop-epoll).
#
# The server (benches/servers/pyecho.py) runs under callgrind; after a 2,000-round-trip warm-up the
# counters are zeroed and echoload runs N round trips on fresh connections, then the counters are
# dumped. Done for N = 20,000 and 60,000: (Ir(60k) - Ir(20k)) / 40,000 leaves out connection
# set-up and teardown. Needs valgrind, a release build (echoload) and .venv (uvloop).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOOP=$1; MODE=$2; CONNS=${3:-100}; SIZE=${4:-1024}
PY=${VPY:-$ROOT/.venv/bin/python}
LOAD=$ROOT/target/release/echoload
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# valgrind's gdbserver FIFOs, which a killed server leaves behind, go with the work dir.
VGDB=--vgdb-prefix=$WORK/vgdb

count() {  # count N -> total Ir over N round trips (plus one connection set-up)
    local n=$1 port=$((20000 + RANDOM % 20000)) out=$WORK/cg.$1
    local server=("$ROOT/benches/servers/pyecho.py" --loop "$LOOP" --mode "$MODE")
    [ "$MODE" = floor ] && server=("$ROOT/benches/servers/pyfloor.py" --backend "${LOOP#ringloop-}")
    PYTHONPATH=$ROOT/python-binding/src valgrind --tool=callgrind "$VGDB" --callgrind-out-file="$out.%p" \
        "$PY" "${server[@]}" --port "$port" >"$WORK/log.$n" 2>"$WORK/err.$n" &
    local pid=$!
    for _ in $(seq 600); do grep -q listening "$WORK/log.$n" && break; sleep 0.1; done
    "$LOAD" --port "$port" -c "$CONNS" -s "$SIZE" --requests 2000 --warmup 0 >/dev/null
    callgrind_control "$VGDB" -z "$pid" >/dev/null
    "$LOAD" --port "$port" -c "$CONNS" -s "$SIZE" --requests "$n" --warmup 0 >/dev/null
    callgrind_control "$VGDB" -d "$pid" >/dev/null
    sleep 1
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    grep -h '^summary:' "$out".*.1 | awk '{print $2}'
}

a=$(count 20000)
b=$(count 60000)
echo "$LOOP/$MODE ${CONNS}x${SIZE}B: $(( (b - a) / 40000 )) user-space instructions per round trip (steady state)"
