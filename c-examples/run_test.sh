#!/bin/bash
# Runs one example's test on one backend: run_test.sh NAME BACKEND BINARY [WRAPPER...]
# The echo servers are driven by echo_client.py (real data, verified byte for byte, then SIGTERM
# and a check of a clean exit); the other examples check their own results and exit non-zero on
# any failure. Output is kept in build/logs and shown only when the test fails.
set -u
name=$1 backend=$2 binary=$3
shift 3
export RINGLOOP_BACKEND=$backend
here=$(cd "$(dirname "$0")" && pwd)
case $(basename "$(dirname "$binary")") in
  asan) variant=asan+ubsan ;;
  static) variant=static ;;
  *) variant=${1:+${1##*/}} variant=${variant:-dynamic} ;;
esac
label="$name [$backend, $variant]"
mkdir -p "$here/build/logs"
log="$here/build/logs/$name-$backend-$variant.log"
case $name in
  echo_server|echo_poll)
    timeout -k 10 300 "${PYTHON:-python3}" "$here/echo_client.py" -- "$@" "$binary" >"$log" 2>&1 ;;
  *)
    timeout -k 10 120 "$@" "$binary" >"$log" 2>&1 ;;
esac
rc=$?
if [ $rc -ne 0 ]; then
  cat "$log"
  echo "FAIL: $label (exit $rc; log: $log)"
  exit 1
fi
echo "ok: $label"
