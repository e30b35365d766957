#!/bin/bash
# Runs one example's test on one backend: run_test.sh NAME BACKEND BINARY [WRAPPER...]
# The echo servers are driven by echo_client.py (real data, verified byte for byte, then SIGTERM
# and a check of a clean exit); the other examples check their own results and exit non-zero
# on any failure.
set -u
name=$1 backend=$2 binary=$3
shift 3
export RINGLOOP_BACKEND=$backend
here=$(cd "$(dirname "$0")" && pwd)
label="$name [$backend]${1:+ under ${1##*/}}"
case $name in
  echo_server|echo_poll)
    timeout 300 "${PYTHON:-python3}" "$here/echo_client.py" -- "$@" "$binary" ;;
  *)
    timeout 120 "$@" "$binary" ;;
esac
rc=$?
if [ $rc -ne 0 ]; then
  echo "FAIL: $label (exit $rc)"
  exit 1
fi
echo "ok: $label"
