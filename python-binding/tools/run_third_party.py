#!/usr/bin/env python3
"""Run third-party asyncio libraries' own test suites on the stdlib loop and on ringloop, and
compare per test.

What people put on an event loop is mostly libraries: a loop that passes asyncio's own suite can
still break one of them (session 15 found two such bugs this way, with anyio's and websockets'
suites). This runs, each from the sdist of a pinned version, in a virtualenv of its own under
``--work-dir``:

* ``anyio``: its whole test suite on its asyncio backend (trio and uvloop variants are not
  installed and skip themselves);
* ``aiohttp``: the client, server, connector, streams, sendfile and websocket modules (the rest
  of its suite measures parsers and helpers that never touch the loop).

Each suite runs once on the stdlib loop and once per ringloop backend. ringloop is imported from
this source tree (``python-binding/src``) with the library in ``RINGLOOP_LIBRARY`` (default: the
workspace's release build), and a pytest plugin installs ringloop's policy, so every loop those
suites make is a ``ringloop.Loop``. The plugin counts the loops made, per type and process: a
ringloop run that made another type of loop, or none, is an error.

Outcomes are read per test from pytest's JUnit XML. A test that passes on the stdlib loop but not
on ringloop is re-run alone on both loops, twice, so that a timing-sensitive flake or a warning
attributed to the wrong test (a socket some earlier test leaked, collected later) does not count;
what still differs is reported, and ``--check`` then fails. Tests that fail on the stdlib loop too
(no IPv6 here, running as root...) are counted, not reported.

Not part of ``make test``: it downloads from PyPI and takes ~15 minutes. ``make compat`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
COLUMNS = ("stdlib", "ringloop-io_uring", "ringloop-epoll")
#: Where ``import ringloop`` comes from (``--ringloop-src``).
SOURCE = ROOT / "python-binding" / "src"

#: Per suite: the pinned version, its test dependencies, and the pytest arguments (run from the
#: unpacked sdist).
SUITES: Dict[str, dict] = {
    "anyio": {
        "version": "4.16.0",
        "install": [
            "blockbuster==1.5.26",
            "hypothesis",
            "psutil",
            "pytest==9.0.3",
            "pytest-mock==3.15.1",
            "pytest-timeout==2.4.0",
            "trustme==1.2.1",
            "truststore",
        ],
        "args": ["-k", "not trio", "tests"],
    },
    "aiohttp": {
        "version": "3.14.5",
        "install": [
            "blockbuster==1.5.26",
            "coverage==7.14.1",  # named by its pytest.ini's warning filters
            "freezegun==1.5.5",
            "gunicorn==26.0.0",
            "isal==1.8.0",
            "proxy-py==2.4.10",
            "pytest==9.0.3",
            "pytest-mock==3.15.1",
            "pytest-timeout==2.4.0",
            "pytest-xdist==3.8.0",
            "re-assert",
            "trustme==1.2.1",
            "zlib-ng==1.0.0",
        ],
        "args": [
            "-o", "addopts=",
            "-m", "not dev_mode and not autobahn and not internal",
            "-n", "2",
        ] + [
            f"tests/test_{name}.py"
            for name in (
                "web_functional", "client_functional", "web_server", "client_proto",
                "web_sendfile_functional", "client_request", "connector", "run_app",
                "test_utils", "web_websocket_functional", "streams",
            )
        ],
    },
}

PLUGIN = '''"""pytest plugin: every asyncio loop is a ringloop loop (run_third_party.py)."""
import asyncio
import collections
import json
import os

import ringloop

ringloop.install()
_made = collections.Counter()
_policy = asyncio.get_event_loop_policy()
_new_event_loop = _policy.new_event_loop


def _counting_new_event_loop():
    loop = _new_event_loop()
    _made[type(loop).__module__ + "." + type(loop).__qualname__] += 1
    return loop


_policy.new_event_loop = _counting_new_event_loop


def pytest_sessionfinish(session, exitstatus):
    # One file per process (xdist workers too), summed by the runner.
    path = os.path.join(os.environ["RINGLOOP_LOOPS_DIR"], f"{os.getpid()}.json")
    with open(path, "w") as out:
        json.dump(dict(_made), out)
'''


def prepare(name: str, work: Path) -> tuple:
    """The suite's virtualenv python and its unpacked sdist, made once."""
    spec = SUITES[name]
    home = work / f"{name}-{spec['version']}"
    python = home / "venv" / "bin" / "python"
    source = home / "src" / f"{name}-{spec['version']}"
    if not python.exists():
        venv.create(home / "venv", with_pip=True)
    if not (home / "installed").exists():
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + [f"{name}=={spec['version']}"] + spec["install"], check=True)
        (home / "installed").touch()
    if not source.exists():
        download = home / "sdist"
        subprocess.run(
            [str(python), "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-deps", "--no-binary", ":all:", "-d", str(download),
             f"{name}=={spec['version']}"],
            check=True,
        )
        (archive,) = download.glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(home / "src", filter="data")
        # The tests must import the installed wheel (compiled speedups), not the source tree.
        package = source / name
        if (source / "pyproject.toml").exists() and package.is_dir():
            shutil.rmtree(package)
    (home / "ringloop_policy.py").write_text(PLUGIN)
    return python, source, home


def run_pytest(python: Path, source: Path, home: Path, column: str, args: List[str],
               xml: Path, log: Path, timeout: float, strict: bool = True) -> None:
    """One pytest run of ``args`` on ``column``'s loop, outcomes in ``xml``. ``strict``: a
    run that did not finish normally, or a ringloop run that made no ringloop loop, or a loop
    of another type, ends the program."""
    xml.unlink(missing_ok=True)  # a run that writes none must not be read as the last one's
    env = dict(os.environ)
    env.pop("RINGLOOP_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE), str(home)])
    env["RINGLOOP_LIBRARY"] = os.path.abspath(
        env.get("RINGLOOP_LIBRARY") or ROOT / "target" / "release" / "libringloop.so"
    )
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "60",
               f"--junitxml={xml}"]
    if column != "stdlib":
        env["RINGLOOP_BACKEND"] = column.split("-", 1)[1]
        command += ["-p", "ringloop_policy"]
    with tempfile.TemporaryDirectory(prefix="third-party-") as scratch, open(log, "wb") as out:
        env["TMPDIR"] = scratch
        env["RINGLOOP_LOOPS_DIR"] = loops_dir = os.path.join(scratch, "loops")
        os.mkdir(loops_dir)
        command += [f"--basetemp={scratch}/pt"] + args
        try:
            status = subprocess.run(command, cwd=source, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        made: Dict[str, int] = {}
        for name in os.listdir(loops_dir):
            with open(os.path.join(loops_dir, name)) as counts:
                for kind, n in json.load(counts).items():
                    made[kind] = made.get(kind, 0) + n
    if not strict:
        return
    if status not in (0, 1):
        raise SystemExit(f"{column}: pytest exited with {status} (see {log})")
    if column != "stdlib":
        # A run that never reached ringloop would compare the stdlib loop with itself.
        others = {kind: n for kind, n in made.items() if kind != "ringloop._loop.Loop"}
        if others or not made:
            raise SystemExit(f"{column}: loops made: {made or 'none'} (see {log})")
        print(f"  {made['ringloop._loop.Loop']} ringloop loops made", flush=True)


def outcomes(xml: Path) -> Dict[str, str]:
    """``test id: passed|failure|error|skipped`` from a JUnit XML file (missing: no tests)."""
    found: Dict[str, str] = {}
    if not xml.exists():
        return found
    for case in ElementTree.parse(xml).iter("testcase"):
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = child.tag
        path = case.get("classname", "").replace(".", "/")
        found[f"{path}::{case.get('name')}"] = state
    return found


def node_id(test: str, source: Path) -> str:
    """The pytest node id of a JUnit ``classname::name`` (classname: module path, then class)."""
    path, name = test.split("::", 1)
    parts = path.split("/")
    for cut in range(len(parts), 0, -1):
        module = source.joinpath(*parts[:cut]).with_suffix(".py")
        if module.exists():
            return "::".join(["/".join(parts[:cut]) + ".py"] + parts[cut:] + [name])
    return test


def options_only(args: List[str]) -> List[str]:
    """A suite's pytest arguments without its test paths."""
    return [a for a in args if not a.startswith("tests")]


def main() -> int:
    global SOURCE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", nargs="+", choices=sorted(SUITES), default=sorted(SUITES))
    parser.add_argument("--work-dir", type=Path, default=ROOT / "target" / "third-party")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a test passing on the stdlib loop fails on ringloop")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per suite run")
    parser.add_argument("--ringloop-src", type=Path, default=SOURCE,
                        help="the directory holding the ringloop package to test")
    parser.add_argument("--tests", nargs="+",
                        help="run these test paths or node ids instead of the suite's choice")
    options = parser.parse_args()
    SOURCE = options.ringloop_src.resolve()
    if options.tests:
        for name in options.suites:
            spec = SUITES[name]
            spec["args"] = options_only(spec["args"]) + options.tests
    options.work_dir.mkdir(parents=True, exist_ok=True)
    differing_total = 0
    for name in options.suites:
        python, source, home = prepare(name, options.work_dir)
        results = {}
        for column in COLUMNS:
            xml, log = home / f"{column}.xml", home / f"{column}.log"
            print(f"{name} {SUITES[name]['version']}: running on {column} (log: {log})", flush=True)
            run_pytest(python, source, home, column, SUITES[name]["args"], xml, log,
                       options.timeout)
            results[column] = outcomes(xml)
        reference = results["stdlib"]
        print(f"\n{name} {SUITES[name]['version']}  (passed/failed/errors/skipped)")
        for column in COLUMNS:
            states = list(results[column].values())
            counts = "/".join(str(states.count(s)) for s in ("passed", "failure", "error", "skipped"))
            print(f"  {column:<20} {counts}")
        for column in COLUMNS[1:]:
            suspects = sorted(
                test for test, state in reference.items()
                if state == "passed" and results[column].get(test, "missing") not in ("passed", "skipped")
            )
            # Re-run each alone, twice, on both loops: still failing on ringloop and passing on
            # the stdlib loop is a difference.
            confirmed = []
            for test in suspects:
                nid = node_id(test, source)
                args = options_only(SUITES[name]["args"])
                if "-n" in args:
                    i = args.index("-n")
                    del args[i:i + 2]
                verdicts = []
                for attempt in range(2):
                    for col in ("stdlib", column):
                        xml = home / f"rerun-{col}.xml"
                        run_pytest(python, source, home, col, args + [nid], xml,
                                   home / f"rerun-{col}.log", 300, strict=False)
                        verdicts.append((col, outcomes(xml).get(test, "missing")))
                mine = [v for c, v in verdicts if c == column]
                theirs = [v for c, v in verdicts if c == "stdlib"]
                if all(v not in ("passed", "skipped") for v in mine) and "passed" in theirs:
                    confirmed.append(test)
            flaky = len(suspects) - len(confirmed)
            print(f"  {column}: {len(confirmed)} tests pass on the stdlib loop only"
                  + (f" ({flaky} more passed alone: flaky or mis-attributed)" if flaky else ""))
            for test in confirmed:
                print(f"    DIFFERS: {test}")
            differing_total += len(confirmed)
    if options.check:
        print("CHECK PASSED" if not differing_total else "CHECK FAILED")
        return 1 if differing_total else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
