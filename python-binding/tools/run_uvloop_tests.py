#!/usr/bin/env python3
"""Run uvloop's own test suite on the stdlib loop and on ringloop, and compare per test.

uvloop's wheel does not ship its tests, so the sdist of the installed uvloop version is downloaded
with pip (once: it is cached under ``--cache-dir``) and its ``tests/`` directory is run from there.

Every test module of that suite writes its tests once in mixins and runs them twice: in classes
based on ``uvloop._testbase.UVTestCase`` (on uvloop, with uvloop's expectations) and in classes
based on ``AIOTestCase`` (on ``asyncio.new_event_loop()``, with asyncio's). ringloop follows
asyncio's semantics, so the AIO classes are run: once on the stdlib loop (the reference), once per
ringloop backend, each in a subprocess of its own. A test that hangs (``--test-timeout``) or
crashes its process costs only itself: the run goes on with the next test in a new process. In a
ringloop run:

* ``AIOTestCase.new_loop()`` returns a ``ringloop.Loop``, and asyncio's default policy is
  ringloop's (``new_policy()``, ``asyncio.new_event_loop()``, ``asyncio.run()``, also after a
  tearDown resets the policy);
* ``RINGLOOP_BACKEND`` selects the backend, and the run counts the loops created per backend, so
  a run that silently fell back to the stdlib loop or to the other backend shows up;
* ``is_asyncio_loop()`` is true for a ``ringloop.Loop``: the suite asks it to choose between
  asyncio's and uvloop's expectations, and ringloop's are asyncio's;
* the programs that test_signals runs in a child interpreter (``NEW_LOOP``) build a
  ``ringloop.Loop`` there too.

Outcomes (subtests included) are collected per test id by a custom result class and passed to the
parent as JSON lines. ``--check`` fails when a ringloop outcome differs from the stdlib's, unless
the test is listed with a reason in ``uvloop_expected_differences.txt``, or when a run had a
problem that no test outcome shows (a module that cannot be imported, a process that did not exit). Differing tests are re-run once in a
fresh process on both loops first, so one timing-sensitive flake does not fail the check (it is
reported as flaky).

``--uv-classes`` runs the UV classes instead, on uvloop (the reference) and on ringloop: where
ringloop differs from uvloop's own behaviour. Informational; ``--check`` does not apply.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import faulthandler
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import unittest
from pathlib import Path

from suite_results import (
    BACKENDS,
    JsonLinesResult,
    child_environment,
    iter_tests,
    load_expected_differences,
    read_json_lines,
    run_logged,
    write_record,
)

HERE = Path(__file__).resolve().parent
EXPECTED_DIFFERENCES = HERE / "uvloop_expected_differences.txt"
DEFAULT_CACHE_DIR = HERE.parent.parent / "target" / "python-binding" / "uvloop-sdist"

#: The loop each kind of test class is written for: the reference ringloop is compared with.
REFERENCE = {"aio": "stdlib", "uv": "uvloop"}
#: Outcomes that end a child process early; the tests after them run in a new one.
FATAL = {"hang", "crash"}
#: Exit status of a child whose watchdog ended a hung test.
HANG_STATUS = 3


def ringloop_column(backend):
    return f"ringloop-{backend}"


# ------------------------------------------------------------------------------------------------
# Child process: run the selected classes on one loop and write one JSON line per outcome.


class RecordingResult(JsonLinesResult, unittest.TextTestResult):
    """The usual verbose unittest output (for the log), plus one JSON line per outcome.

    Subtests are recorded under their own ids. A test that has no outcome of its own because a
    subtest failed (unittest then reports only the subtest) is recorded as failed. A test that
    runs longer than ``test_timeout`` is recorded as hung, and the process ends (a hung loop
    cannot be recovered in-process); the parent continues with the next test in a new process.
    """

    def __init__(self, records, stats, test_timeout, stream, descriptions, verbosity):
        super().__init__(records, stream, descriptions, verbosity)
        self.stats = stats
        self.test_timeout = test_timeout
        self._watchdog = None
        self._recorded = set()
        self._failed_subtests = {}

    def _record(self, test, outcome, detail=None, parent=None):
        self._recorded.add(test.id())
        self._emit({"event": "outcome", "id": test.id(), "outcome": outcome, "detail": detail,
                    "parent": parent.id() if parent is not None else None})
        if parent is not None and outcome in ("fail", "error"):
            if self._failed_subtests.get(parent.id()) != "error":
                self._failed_subtests[parent.id()] = outcome

    def _test_hung(self, test):
        self.stream.writeln(f"\n{test.id()} still running after {self.test_timeout:.0f}s; threads:")
        self.stream.flush()
        faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
        sys.stdout.flush()
        self._record(test, "hang", f"still running after {self.test_timeout:.0f}s "
                                   "(thread stacks in the run's log)")
        self._emit({"event": "stats", **self.stats})
        os._exit(HANG_STATUS)

    def startTest(self, test):
        super().startTest(test)
        self._watchdog = threading.Timer(self.test_timeout, self._test_hung, (test,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def stopTest(self, test):
        # Python 3.12 stops a skipped test it never started.
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().stopTest(test)
        failed = self._failed_subtests.pop(test.id(), None)
        if failed is not None and test.id() not in self._recorded:
            self._record(test, failed, "a subtest did not pass (see the subtests' outcomes)")


class RecordingRunner(unittest.TextTestRunner):
    def __init__(self, records, stats, test_timeout, **kwargs):
        super().__init__(**kwargs)
        self.records = records
        self.stats = stats
        self.test_timeout = test_timeout

    def _makeResult(self):
        return RecordingResult(self.records, self.stats, self.test_timeout, self.stream,
                               self.descriptions, self.verbosity)


def _install_ringloop(test_base, base_class, test_classes, stats):
    """Points the suite at ringloop (see the module docstring); counts loops in ``stats``."""
    import asyncio
    import asyncio.unix_events

    import ringloop

    original_init = ringloop.Loop.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        stats["loops"] += 1
        stats["backends"][self.backend] = stats["backends"].get(self.backend, 0) + 1

    ringloop.Loop.__init__ = counting_init
    # No backend argument: RINGLOOP_BACKEND (set by the parent) chooses, as it does for the loops
    # the policy makes and for the child interpreters test_signals starts.
    base_class.new_loop = lambda self: ringloop.Loop()
    base_class.new_policy = lambda self: ringloop.EventLoopPolicy()
    asyncio.DefaultEventLoopPolicy = ringloop.EventLoopPolicy
    asyncio.unix_events.DefaultEventLoopPolicy = ringloop.EventLoopPolicy

    # Otherwise a ringloop loop takes uvloop's branch where the suite distinguishes the two:
    # test_udp's test_socketpair then fails, and leaves an executor thread blocked in recv() that
    # keeps the process from exiting.
    asks_uvloop_otherwise = test_base.BaseTestCase.is_asyncio_loop
    test_base.BaseTestCase.is_asyncio_loop = (
        lambda self: isinstance(self.loop, ringloop.Loop) or asks_uvloop_otherwise(self)
    )

    for cls in test_classes:
        if getattr(cls, "NEW_LOOP", None):
            cls.NEW_LOOP = "__import__('ringloop').Loop()"
    return ringloop


def _test_classes(module, base_class):
    return [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, base_class) and obj.__module__ == module.__name__
    ]


def child_main(args):
    import importlib

    sys.path.insert(0, args.tests_dir)
    from uvloop import _testbase as test_base

    base_class = test_base.UVTestCase if args.classes == "uv" else test_base.AIOTestCase
    stats = {"loop": args.loop, "loops": None, "backends": {}, "import_errors": {}}
    test_classes = []
    for module_name in args.modules:
        try:
            module = importlib.import_module(module_name)
        except Exception:
            stats["import_errors"][module_name] = traceback.format_exc()[-4000:]
            continue
        test_classes += _test_classes(module, base_class)
    if args.loop.startswith("ringloop-"):
        stats["loops"] = 0
        ringloop = _install_ringloop(test_base, base_class, test_classes, stats)
        stats["ringloop"] = ringloop.__file__

    loader = unittest.TestLoader()
    if args.tests:
        suite = loader.loadTestsFromNames(args.tests)
    else:
        suite = unittest.TestSuite(loader.loadTestsFromTestCase(cls) for cls in test_classes)
    with open(args.results, "w", encoding="utf-8") as records:
        # The tests in order, so that the parent can continue after one that hung or crashed.
        write_record(records, {"event": "plan", "ids": [t.id() for t in iter_tests(suite)]})
        runner = RecordingRunner(records, stats, args.test_timeout, stream=sys.stdout, verbosity=2)
        started = time.monotonic()
        runner.run(suite)
        stats["seconds"] = round(time.monotonic() - started, 1)
        write_record(records, {"event": "stats", **stats})
    # Outcomes are in the records; a non-zero status means the run itself went wrong.
    return 0


# ------------------------------------------------------------------------------------------------
# Parent: fetch the tests, run the children, compare, print.


def uvloop_tests_dir(cache_dir):
    """The tests/ directory of the installed uvloop's sdist, downloaded and unpacked if needed."""
    try:
        version = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"uvloop is not installed in {sys.executable}")
    cache_dir = Path(cache_dir).resolve()
    tests_dir = cache_dir / f"uvloop-{version}" / "tests"
    if tests_dir.is_dir():
        return version, tests_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        print(f"downloading the uvloop {version} sdist (its tests are not in the wheel)", flush=True)
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             "--disable-pip-version-check", f"uvloop=={version}", "-d", scratch],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        archives = list(Path(scratch).glob(f"uvloop-{version}.tar.gz"))
        if download.returncode != 0 or not archives:
            raise SystemExit(f"pip could not download the uvloop {version} sdist:\n{download.stdout}")
        prefix = f"uvloop-{version}/tests/"
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise SystemExit(f"{archives[0].name} has no {prefix} directory")
            unpacked = Path(scratch) / "unpacked"
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
                archive.extractall(unpacked, members=members, filter="data")
            else:
                archive.extractall(unpacked, members=members)
        # Moved into place whole, so an interrupted download never leaves a partial tests/.
        tests_dir.parent.mkdir(exist_ok=True)
        try:
            os.rename(unpacked / f"uvloop-{version}" / "tests", tests_dir)
        except OSError:
            if not tests_dir.is_dir():  # not merely another run that got there first
                raise
    return version, tests_dir


def read_records(path):
    """(planned test ids, outcomes by test id, stats, test running when the child ended or None)."""
    plan, outcomes, stats, running = [], {}, {}, None
    for record in read_json_lines(path):
        if record["event"] == "plan":
            plan = record["ids"]
        elif record["event"] == "start":
            running = record["id"]
        elif record["event"] == "outcome":
            outcomes[record["id"]] = {key: record[key] for key in ("outcome", "detail", "parent")}
            if running == record["id"]:
                running = None
        elif record["event"] == "stats":
            stats = record
            running = None
    return plan, outcomes, stats, running


def run_child(column, classes, tests_dir, modules, tests, args, log_dir, tag):
    """Runs the suite (or only ``tests``) on one loop in one subprocess; returns its record."""
    results = Path(log_dir) / f"{tag}.jsonl"
    log = Path(log_dir) / f"{tag}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--loop", column,
               "--classes", classes, "--tests-dir", str(tests_dir), "--results", str(results),
               "--test-timeout", str(args.test_timeout), "--modules", *modules]
    if tests:
        command += ["--tests", *tests]
    started = time.monotonic()
    status = run_logged(command, child_environment(column), log, args.timeout)
    plan, outcomes, stats, running = read_records(results)
    # The test the process ended in (its outcome says how), or a problem no test outcome records.
    ended_in, problem = running, None
    if running is not None:
        status = "timeout" if status == "timeout" else f"crash (exit status {status})"
        outcomes[running] = {"outcome": "hang" if status == "timeout" else "crash", "parent": None,
                             "detail": f"the child process ended during this test: {status}"}
    elif status == HANG_STATUS:
        status = "hang"
        ended_in = next(t for t in reversed(plan) if t in outcomes and outcomes[t]["outcome"] == "hang")
    elif status == "timeout":
        problem = "timeout after the last test (a thread or process kept it from exiting)"
    elif status != 0:
        problem = f"exit status {status} outside any test"
    return {
        "status": "ok" if status == 0 else (problem or status),
        "problems": [problem] if problem else [],
        "ended_in": ended_in,
        "plan": plan,
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": outcomes,
        "loops": stats.get("loops"),
        "backends": stats.get("backends") or {},
        "import_errors": stats.get("import_errors", {}),
        "logs": [str(log)],
    }


def run_loop(column, classes, tests_dir, modules, tests, args, log_dir, tag):
    """Runs on one loop; after a test that hangs or crashes, continues in a new process with the
    tests after it, so that one test costs only itself."""
    record = run_child(column, classes, tests_dir, modules, tests, args, log_dir, tag)
    part, statuses = record, [record["status"]]
    while part["ended_in"] is not None and part["ended_in"] in part["plan"]:
        remaining = part["plan"][part["plan"].index(part["ended_in"]) + 1:]
        if not remaining:
            break
        part = run_child(column, classes, tests_dir, modules, remaining, args, log_dir,
                         f"{tag}.{len(statuses)}")
        statuses.append(part["status"])
        record["problems"] += part["problems"]
        record["outcomes"].update(part["outcomes"])
        record["seconds"] = round(record["seconds"] + part["seconds"], 1)
        record["logs"] += part["logs"]
        if part["loops"] is not None:
            record["loops"] = (record["loops"] or 0) + part["loops"]
        for backend, count in part["backends"].items():
            record["backends"][backend] = record["backends"].get(backend, 0) + count
    failed = [s for s in statuses if s != "ok"]
    record["status"] = ", ".join(failed) if failed else "ok"
    del record["ended_in"], record["plan"]
    return record


def outcome_of(record, test_id):
    entry = record["outcomes"].get(test_id)
    return entry["outcome"] if entry is not None else "not run"


def differing_tests(reference, record):
    """Test ids (subtests included) whose outcome on ``record``'s loop differs from the reference."""
    ids = set(reference["outcomes"]) | set(record["outcomes"])
    return sorted(t for t in ids if outcome_of(reference, t) != outcome_of(record, t))


def rerunnable_id(record, reference, test_id):
    """The loadable test id to re-run for ``test_id`` (a subtest's test), or None."""
    entry = record["outcomes"].get(test_id) or reference["outcomes"].get(test_id)
    if entry is not None and entry["outcome"] in FATAL:
        return None  # a hang or crash is never forgiven as a flake
    name = (entry or {}).get("parent") or test_id
    # "setUpClass (module.Class)" and the like name no loadable test.
    return None if " " in name else name


def tally(record):
    """Outcome counts over the tests (unittest's count), and the number of subtests."""
    counts = {"run": 0, "pass": 0, "fail": 0, "error": 0, "skip": 0, "subtests": 0}
    for entry in record["outcomes"].values():
        if entry["parent"] is not None:
            counts["subtests"] += 1
            continue
        counts["run"] += 1
        key = {"xfail": "pass", "unexpected-success": "fail", "hang": "error", "crash": "error"}
        counts[key.get(entry["outcome"], entry["outcome"])] += 1
    return counts


def print_table(columns, runs):
    rows = [["", *columns]]
    counts = {column: tally(runs[column]) for column in columns}
    for key in ("run", "pass", "fail", "error", "skip", "subtests"):
        rows.append([key, *(str(counts[c][key]) for c in columns)])
    rows.append(["ringloop loops", *(str(runs[c]["loops"]) if runs[c]["loops"] is not None else "-"
                                     for c in columns)])
    rows.append(["seconds", *(f"{runs[c]['seconds']:.0f}" for c in columns)])
    rows.append(["status", *(runs[c]["status"] for c in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("-" * w for w in widths)
    print(rule)
    for number, row in enumerate(rows):
        print("  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]))
        if number == 0:
            print(rule)
    print(rule)


def print_detail(detail, lines=3):
    if detail:
        for line in [l for l in detail.strip().splitlines() if l.strip()][-lines:]:
            print(f"      {line.strip()[:200]}")


def parent_main(args):
    classes = "uv" if args.uv_classes else "aio"
    reference_column = REFERENCE[classes]
    wanted = args.loops or [reference_column, *BACKENDS]
    for loop in wanted:
        if loop in REFERENCE.values() and loop != reference_column:
            raise SystemExit(f"--loops {loop}: the {classes.upper()} classes run on "
                             f"{reference_column}, not {loop}")
    columns = [loop if loop in REFERENCE.values() else ringloop_column(loop) for loop in wanted]
    if args.check and classes == "uv":
        raise SystemExit("--check compares the AIO classes only (--uv-classes is informational)")

    version, tests_dir = uvloop_tests_dir(args.cache_dir)
    modules = args.modules or sorted(p.stem for p in tests_dir.glob("test_*.py"))
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="uvloop-tests-")).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    runs = {}
    # One run at a time by default: the suite picks "free" ports by probing (find_free_port), and
    # two runs probing at once can pick the same one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(run_loop, column, classes, tests_dir, modules, None, args, log_dir, column): column
            for column in columns
        }
        for future in concurrent.futures.as_completed(futures):
            runs[futures[future]] = future.result()

    # Runs that did not complete, and modules that did not import, fail the check whatever the
    # outcomes: a missing dependency (pyOpenSSL, psutil) must not silently drop a module.
    run_problems = []
    for column in columns:
        run = runs[column]
        for problem in run["problems"]:
            run_problems.append(f"{column}: {problem} (see {run['logs'][-1]})")
        for module, error in run["import_errors"].items():
            run_problems.append(f"{column}: {module} could not be imported: {error.strip().splitlines()[-1]}")
        if not run["outcomes"]:
            run_problems.append(f"{column}: no test ran")
        if column.startswith("ringloop-"):
            backend = column.split("-", 1)[1]
            others = set(run["backends"] or {}) - {backend}
            if others:
                run_problems.append(f"{column}: loops ran on {sorted(others)} too "
                                    "(RINGLOOP_BACKEND was not honoured)")

    differences, flaky = {}, []
    reference = runs.get(reference_column)
    ringloop_columns = [c for c in columns if c.startswith("ringloop-")]
    if reference is not None:
        differences = {c: differing_tests(reference, runs[c]) for c in ringloop_columns}
        # Re-run the differing tests once in a fresh process, on the reference loop and on the
        # loop that differed; where they then agree, the first difference was a flake.
        to_rerun = {c: sorted({rerunnable_id(runs[c], reference, t) for t in differences[c]} - {None})
                    for c in ringloop_columns}
        if args.rerun and any(to_rerun.values()):
            all_rerun = sorted(set().union(*to_rerun.values()))
            rerun_reference = run_loop(reference_column, classes, tests_dir, modules, all_rerun,
                                       args, log_dir, f"{reference_column}.rerun")
            for column in ringloop_columns:
                if not to_rerun[column]:
                    continue
                rerun = run_loop(column, classes, tests_dir, modules, to_rerun[column],
                                 args, log_dir, f"{column}.rerun")
                still = []
                for test_id in differences[column]:
                    first = (outcome_of(reference, test_id), outcome_of(runs[column], test_id))
                    then = (outcome_of(rerun_reference, test_id), outcome_of(rerun, test_id))
                    rerun_ran = rerunnable_id(runs[column], reference, test_id) in to_rerun[column]
                    if rerun_ran and then[0] == then[1] and then[0] != "not run":
                        flaky.append({"column": column, "id": test_id, "first": first, "then": then[0]})
                    else:
                        still.append(test_id)
                differences[column] = still

    expected = load_expected_differences(EXPECTED_DIFFERENCES) if classes == "aio" else {}
    unexplained, explained = [], set()
    for column in ringloop_columns:
        backend = column.split("-", 1)[1]
        for test_id in differences.get(column, []):
            entry = runs[column]["outcomes"].get(test_id) or reference["outcomes"].get(test_id)
            reasons = expected.get((entry or {}).get("parent") or test_id, {})
            if backend in reasons or "all" in reasons:
                explained.add(((entry or {}).get("parent") or test_id, backend))
            else:
                unexplained.append((column, test_id))

    what = "UV classes: uvloop" if classes == "uv" else "AIO classes: the stdlib loop"
    print()
    print(f"uvloop {version} test suite on Python {sys.version.split()[0]}, {what} against ringloop "
          f"({time.monotonic() - started:.0f}s; logs in {log_dir})")
    print_table(columns, runs)
    for problem in run_problems:
        print(f"RUN PROBLEM: {problem}")

    stale = sorted(
        (test_id, backend) for test_id, reasons in expected.items() for backend in reasons
        if any(ringloop_column(b) in columns for b in (BACKENDS if backend == "all" else (backend,)))
        and not any((test_id, b) in explained for b in (BACKENDS if backend == "all" else (backend,)))
    )
    if explained:
        print(f"{len(explained)} known differences (listed in {EXPECTED_DIFFERENCES.name})")
    if stale and reference is not None:
        print(f"{len(stale)} entries of {EXPECTED_DIFFERENCES.name} no longer differ (remove them):")
        for test_id, backend in stale:
            print(f"  {test_id} {backend}")
    for item in flaky:
        print(f"FLAKY: {item['column']} {item['id']}: {item['first'][0]} on {reference_column}, "
              f"{item['first'][1]} on ringloop, then {item['then']} on both")
    if unexplained:
        print(f"{len(unexplained)} tests whose outcome on ringloop differs from {reference_column}:")
        for column, test_id in unexplained:
            ours = runs[column]["outcomes"].get(test_id, {})
            print(f"  {column} {test_id}: {outcome_of(reference, test_id)} on {reference_column}, "
                  f"{outcome_of(runs[column], test_id)} on ringloop")
            if args.details:
                print_detail(ours.get("detail") or reference["outcomes"].get(test_id, {}).get("detail"))
    elif reference is not None and ringloop_columns:
        print(f"no unexplained differences from {reference_column}")

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({
                "python": sys.version,
                "uvloop": version,
                "classes": classes,
                "columns": columns,
                "runs": runs,
                "run_problems": run_problems,
                "differences": [
                    {"column": c, "id": t, "reference": outcome_of(reference, t),
                     "ringloop": outcome_of(runs[c], t)}
                    for c, t in unexplained
                ],
                "flaky": flaky,
            }, out, indent=1)
        print(f"JSON: {args.json}")

    if args.check:
        if unexplained or run_problems:
            print("CHECK FAILED: see above; fix ringloop, or list a genuine difference with its "
                  f"reason in {EXPECTED_DIFFERENCES}")
            return 1
        print("CHECK PASSED")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if an outcome on ringloop differs from the stdlib loop's (and "
                             "is not an expected difference) or a run did not complete")
    parser.add_argument("--modules", nargs="+", help="test modules to run, e.g. test_tcp (default: all)")
    parser.add_argument("--loops", nargs="+", choices=(*REFERENCE.values(), *BACKENDS),
                        help="loops to run on (default: the reference loop and both ringloop backends)")
    parser.add_argument("--uv-classes", action="store_true",
                        help="run the UV classes on uvloop and ringloop instead of the AIO classes "
                             "on the stdlib loop and ringloop (informational)")
    parser.add_argument("--json", help="write the per-test report to this file")
    parser.add_argument("--log-dir", help="where each run's unittest output and records go "
                                          "(default: a new temporary directory)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help="where the uvloop sdist's tests are kept (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds per test process (default 600)")
    parser.add_argument("--test-timeout", type=float, default=120,
                        help="seconds per test: a test still running then is recorded as hung, with "
                             "every thread's stack in the log, and the run continues with the next "
                             "test in a new process (default 120)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (default 1: parallel runs can race for the same port)")
    parser.add_argument("--no-rerun", dest="rerun", action="store_false",
                        help="do not re-run differing tests once before reporting them")
    parser.add_argument("--details", action="store_true", help="print the end of each difference's traceback")
    # Child mode (internal).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--classes", choices=tuple(REFERENCE), help=argparse.SUPPRESS)
    parser.add_argument("--tests-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tests", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
