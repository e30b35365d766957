#!/usr/bin/env bash
# Runs the pytest suite on every other CPython >= 3.11 found on this machine (PATH or pyenv), each
# in its own virtualenv under $1 (default ../../target/python-binding), with the package installed
# from this checkout. Version-specific behaviour (eager tasks from 3.12, Server.close_clients from
# 3.13, install() deprecation) is only exercised this way. Then that interpreter's own test_asyncio
# on the stdlib loop and on ringloop, compared per test (run_cpython_asyncio.py --check), where
# the interpreter ships its test package. No other interpreter: says so, passes.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
package="$(dirname "$here")"
work="${1:-$package/../target/python-binding}"
mkdir -p "$work"
main_version="${2:-}"   # the version the main run already covers, e.g. 3.11
# pytest's tmp_path directories: short paths (Unix sockets), removed at exit.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

declare -A interpreters=()
for minor in 11 12 13 14 15; do
  version="3.$minor"
  [ "$version" = "$main_version" ] && continue
  # PATH first (pyenv shims there only work for activated versions, hence the probe), then pyenv.
  for candidate in "$(command -v "python$version" 2>/dev/null || true)" \
                   $(ls -d "$HOME"/.pyenv/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -rV); do
    if [ -n "$candidate" ] && "$candidate" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      interpreters[$version]="$candidate"
      break
    fi
  done
done

if [ "${#interpreters[@]}" = 0 ]; then
  echo "test_other_pythons: no other CPython >= 3.11 on this machine; nothing to do"
  exit 0
fi

status=0
for version in $(printf '%s\n' "${!interpreters[@]}" | sort -V); do
  venv="$work/venv-$version"
  echo "== Python $version (${interpreters[$version]}) in $venv"
  [ -x "$venv/bin/python" ] || "${interpreters[$version]}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    pytest pytest-timeout "setuptools>=62.4" "setuptools-rust>=1.5" wheel
  "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall "$package"
  if ! (cd "$package/tests" && env -u RINGLOOP_LIBRARY -u RINGLOOP_BACKEND RINGLOOP_REQUIRE=1 \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider --timeout=120 \
        --basetemp="$scratch/pytest-$version" .); then
    status=1
  fi
  if "$venv/bin/python" -c 'import test.test_asyncio' >/dev/null 2>&1; then
    echo "== Python $version: CPython's test_asyncio, stdlib loop against ringloop"
    if ! (cd "$here" && env -u RINGLOOP_LIBRARY -u RINGLOOP_BACKEND \
          "$venv/bin/python" run_cpython_asyncio.py --check \
          --json "$work/cpython_asyncio-$version.json" --log-dir "$work/cpython-asyncio-logs-$version"); then
      status=1
    fi
  else
    echo "== Python $version: no test.test_asyncio in this interpreter; its CPython suite is not run"
  fi
done
exit $status
