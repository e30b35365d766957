#!/usr/bin/env python3
"""Run CPython's own test_asyncio on the stdlib loop and on ringloop, and compare per test.

Every module runs in its own subprocess (a crash or a hang costs that module only), once with
the stdlib loop and once per ringloop backend. In a ringloop run:

* asyncio's default policy is ringloop's: ``asyncio.DefaultEventLoopPolicy`` is replaced (so
  ``asyncio.set_event_loop_policy(None)`` in a tearDown resets to ringloop, not to the stdlib) and
  ringloop's policy is installed, so ``asyncio.new_event_loop()``, ``asyncio.run()``,
  ``asyncio.Runner`` and ``IsolatedAsyncioTestCase`` all get a ``ringloop.Loop``;
* test classes that build a loop themselves (``create_event_loop``/``new_loop``, see
  ``LOOP_HOOKS``) build a ``ringloop.Loop`` instead of ``asyncio.SelectorEventLoop``;
* ``RINGLOOP_BACKEND`` selects the backend, and the run records how many ringloop loops were
  created on which backend, so a run that silently fell back to the stdlib loop shows up.

Not run, in either mode: modules that test the stdlib's own loop classes with mocks
(test_selector_events, test_unix_events, test_proactor_events, test_windows_*), and classes that
repeat the same tests over another stdlib detail that is not the loop (``DUPLICATE_CLASSES``).

Outcomes are collected per test id by a custom ``unittest.TestResult``. ``--check`` fails when a
test that passes on the stdlib loop does not pass on ringloop, unless that test id is listed in
``cpython_expected_differences.txt`` with a reason. Such tests are re-run once in a fresh process
first, so one timing-sensitive flake does not fail the check (it is reported as flaky).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
import time
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
EXPECTED_DIFFERENCES = HERE / "cpython_expected_differences.txt"
PACKAGE = "test.test_asyncio"

#: Loop-agnostic modules of test_asyncio (those present in the running Python are used).
MODULES = [
    "test_base_events",
    "test_buffered_proto",
    "test_context",
    "test_events",
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_pep492",
    "test_protocols",
    "test_queues",
    "test_runners",
    "test_sendfile",
    "test_server",
    "test_sock_lowlevel",
    "test_ssl",
    "test_sslproto",
    "test_streams",
    "test_subprocess",
    "test_taskgroups",
    "test_tasks",
    "test_threads",
    "test_timeouts",
    "test_transports",
    "test_waitfor",
    "test_asyncio_waitfor",
    "test_eager_task_factory",
    "test_free_threading",
    "test_graph",
    "test_staggered",
]

#: Test classes that construct their loop themselves: the method (or class attribute) that does
#: it. A ringloop run replaces it with one that returns a ``ringloop.Loop``.
LOOP_HOOKS = {
    "test_events": {"EPollEventLoopTests": "create_event_loop"},
    "test_sock_lowlevel": {"EPollEventLoopTests": "create_event_loop"},
    "test_sendfile": {"EPollEventLoopTests": "create_event_loop"},
    "test_buffered_proto": {"BufferedProtocolSelectorTests": "new_loop"},
    "test_server": {"SelectorStartServerTests": "new_loop"},
    "test_sslproto": {"SelectorStartTLSTests": "new_loop"},
}

#: Classes that repeat another class's tests with a different stdlib implementation detail that
#: is not the event loop: the select()/poll() flavours of the epoll-flavoured classes, and the
#: mixed C/Python Task and Future combinations (the pure C and pure Python ones stay).
DUPLICATE_CLASSES = {
    "test_events": {"PollEventLoopTests", "SelectEventLoopTests"},
    "test_sock_lowlevel": {"PollEventLoopTests", "SelectEventLoopTests"},
    "test_sendfile": {"PollEventLoopTests", "SelectEventLoopTests"},
    "test_tasks": {
        "CTaskSubclass_PyFuture_Tests",
        "CTask_CFuture_SubclassTests",
        "CTask_PyFuture_Tests",
        "PyTask_CFutureSubclass_Tests",
        "PyTask_CFuture_Tests",
        "PyTask_PyFuture_SubclassTests",
    },
}

PASSING = {"pass", "xfail"}


# ------------------------------------------------------------------------------------------------
# Child process: run one module (or a list of test ids) and stream outcomes as JSON lines.


class StreamingResult(JsonLinesResult):
    """Writes one JSON line per test outcome, and one when a test starts (crash forensics).

    One outcome per test: a failed subtest fails its test (the subtest's id leads the detail),
    passed subtests are not recorded, an unexpected success is a failure.
    """

    detail_chars = 3000

    def __init__(self, out):
        super().__init__(out)
        self._outcomes = {}

    def startTest(self, test):
        self._outcomes.pop(test.id(), None)
        super().startTest(test)

    def _record(self, test, outcome, detail=None, parent=None):
        if parent is not None and outcome != "skip":
            # A subtest's outcome is its test's; a skipped subtest keeps its own id.
            if outcome == "pass":
                return
            test, detail = parent, f"{test.id()}\n{detail}"
        elif outcome == "xfail":
            detail = None  # an expected failure's traceback is not kept
        elif outcome == "unexpected-success":
            outcome, detail = "fail", "unexpected success"
        test_id = test.id()
        # A failed subtest makes the whole test a failure; later outcomes cannot upgrade it.
        if self._outcomes.get(test_id) in ("fail", "error") and outcome == "pass":
            return
        self._outcomes[test_id] = outcome
        self._emit({"event": "outcome", "id": test_id, "outcome": outcome, "detail": detail})


def _filter_suite(suite, module_name):
    duplicates = DUPLICATE_CLASSES.get(module_name, set())
    kept = unittest.TestSuite()
    for test in iter_tests(suite):
        if type(test).__name__ in duplicates:
            continue
        kept.addTest(test)
    return kept


def _install_ringloop(module_names, stats):
    """Makes every loop the tests create a ringloop.Loop; counts them in ``stats``."""
    import asyncio
    import asyncio.unix_events

    import ringloop

    original_init = ringloop.Loop.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        stats["loops"] += 1
        stats["backends"][self.backend] = stats["backends"].get(self.backend, 0) + 1

    ringloop.Loop.__init__ = counting_init
    asyncio.DefaultEventLoopPolicy = ringloop.EventLoopPolicy
    asyncio.unix_events.DefaultEventLoopPolicy = ringloop.EventLoopPolicy
    asyncio.set_event_loop_policy(ringloop.EventLoopPolicy())

    def make_loop(*_args, **_kwargs):
        return ringloop.Loop()

    for module_name in module_names:
        module = sys.modules[f"{PACKAGE}.{module_name}"]
        for class_name, attribute in LOOP_HOOKS.get(module_name, {}).items():
            cls = getattr(module, class_name, None)
            if cls is not None:
                setattr(cls, attribute, make_loop)
    return ringloop


def child_main(args):
    import importlib

    from test import support

    # Resources that reach outside this machine stay off; everything else is enabled, as when
    # test_asyncio is run directly.
    support.use_resources = ["cpu", "decimal", "subprocess", "tzdata", "walltime", "extralargefile"]

    names = args.tests or [f"{PACKAGE}.{args.module}"]
    module_names = sorted({name[len(PACKAGE) + 1:].split(".")[0] for name in names})
    for module_name in module_names:
        importlib.import_module(f"{PACKAGE}.{module_name}")
    stats = {"mode": args.mode, "loops": 0, "backends": {}}
    if args.mode == "ringloop":
        ringloop = _install_ringloop(module_names, stats)
        stats["ringloop"] = ringloop.__file__

    loader = unittest.TestLoader()
    suite = loader.loadTestsFromNames(names)
    if args.module:
        suite = _filter_suite(suite, args.module)
    with open(args.results, "w", encoding="utf-8") as out:
        result = StreamingResult(out)
        started = time.monotonic()
        suite.run(result)
        stats["seconds"] = round(time.monotonic() - started, 1)
        write_record(out, {"event": "stats", **stats})
    return 0


# ------------------------------------------------------------------------------------------------
# Parent: schedule the children, collect, compare, print.


def available_modules():
    import importlib.util

    seen, found = set(), []
    for name in MODULES:
        if name in seen:
            continue
        seen.add(name)
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            found.append(name)
    return found


def read_results(path):
    """(outcomes by test id, stats, test running when the child died or None)."""
    outcomes, stats, running = {}, {}, None
    for record in read_json_lines(path):
        if record["event"] == "start":
            running = record["id"]
        elif record["event"] == "outcome":
            outcomes[record["id"]] = {"outcome": record["outcome"], "detail": record.get("detail")}
            if running == record["id"]:
                running = None
        elif record["event"] == "stats":
            stats = record
            running = None
    return outcomes, stats, running


def run_child(python, module, column, tests, timeout, log_dir):
    """Runs one child; returns the column's record for the module."""
    mode = "stdlib" if column == "stdlib" else "ringloop"
    tag = f"{module}.{column}" + (".rerun" if tests else "")
    results = Path(log_dir) / f"{tag}.jsonl"
    log = Path(log_dir) / f"{tag}.log"
    command = [python, str(Path(__file__).resolve()), "--child", "--mode", mode, "--results", str(results)]
    command += ["--module", module] if not tests else ["--tests", *tests]
    started = time.monotonic()
    status = run_logged(command, child_environment(column), log, timeout)
    outcomes, stats, running = read_results(results)
    if running is not None:
        outcomes[running] = {"outcome": "hang" if status == "timeout" else "crash",
                             "detail": f"the child process ended during this test (exit status {status})"}
    return {
        "status": status if status != 0 else "ok",
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": outcomes,
        "loops": stats.get("loops"),
        "backends": stats.get("backends"),
        "log": str(log),
    }


def counts(record):
    tally = {"pass": 0, "fail": 0, "error": 0, "skip": 0}
    for outcome in record["outcomes"].values():
        key = {"xfail": "pass", "hang": "error", "crash": "error"}.get(outcome["outcome"], outcome["outcome"])
        tally[key] += 1
    return tally


def regressions(stdlib, ringloop_record):
    """Test ids passing on the stdlib loop that do not pass on ringloop."""
    lost = []
    for test_id, outcome in stdlib["outcomes"].items():
        if outcome["outcome"] not in PASSING:
            continue
        theirs = ringloop_record["outcomes"].get(test_id)
        if theirs is None or theirs["outcome"] not in PASSING:
            lost.append(test_id)
    return sorted(lost)


def print_table(modules, columns, report):
    def cell(record):
        if record is None:
            return "-"
        c = counts(record)
        text = f"{c['pass']}/{c['fail']}/{c['error']}/{c['skip']}"
        if record.get("loops"):
            text += f" ({record['loops']})"
        if record["status"] != "ok":
            text += f" [{record['status']}]"
        return text

    header = ["module"] + [f"{c} p/f/e/s" for c in columns]
    rows = [[m] + [cell(report[m].get(c)) for c in columns] for m in modules]
    totals = ["TOTAL"]
    for column in columns:
        tally = {"pass": 0, "fail": 0, "error": 0, "skip": 0}
        for module in modules:
            record = report[module].get(column)
            if record is not None:
                for key, value in counts(record).items():
                    tally[key] += value
        totals.append(f"{tally['pass']}/{tally['fail']}/{tally['error']}/{tally['skip']}")
    rows.append(totals)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for row in rows[:-1]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    print(line)
    print("  ".join(str(v).ljust(w) for v, w in zip(rows[-1], widths)))
    print(line)


def parent_main(args):
    python = args.python or sys.executable
    modules = args.modules or available_modules()
    columns = ["stdlib"] + [f"ringloop-{b}" for b in args.backends]
    if args.skip_stdlib:
        columns.remove("stdlib")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="cpython-asyncio-")).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)

    # Long modules first, so the two workers finish together.
    slow_first = {"test_events": 0, "test_subprocess": 1, "test_tasks": 2, "test_sendfile": 3,
                  "test_streams": 4, "test_ssl": 5, "test_sslproto": 6, "test_base_events": 7}
    jobs = sorted(((m, c) for m in modules for c in columns), key=lambda mc: slow_first.get(mc[0], 99))
    report = {m: {} for m in modules}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(run_child, python, module, column, None, args.timeout, log_dir): (module, column)
            for module, column in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            module, column = futures[future]
            record = future.result()
            report[module][column] = record
            if args.verbose:
                print(f"  {module:<22} {column:<18} {record['seconds']:>6.1f}s {counts(record)}"
                      f" loops={record['loops']} {record['status']}", flush=True)

    expected = load_expected_differences(EXPECTED_DIFFERENCES)
    problems, flaky, expected_hits = [], [], set()
    for column in columns:
        if column == "stdlib":
            continue
        backend = column.split("-", 1)[1]
        for module in modules:
            stdlib, theirs = report[module].get("stdlib"), report[module][column]
            other_backends = set(theirs["backends"] or {}) - {backend}
            if other_backends:
                problems.append((column, module, "<module>", f"loops ran on {sorted(other_backends)}, "
                                 f"not only on {backend} (RINGLOOP_BACKEND was not honoured)", None))
            if stdlib is None:
                continue
            lost = regressions(stdlib, theirs)
            unexplained = []
            for test_id in lost:
                reasons = expected.get(test_id, {})
                if backend in reasons or "all" in reasons:
                    expected_hits.add((test_id, backend))
                else:
                    unexplained.append(test_id)
            # Re-run the differences once in a fresh process: tests that did not run at all
            # (the module hung or crashed before them) get their first result; a test that
            # failed and then passes is reported as flaky. A hang or crash is never forgiven.
            # Ids such as "setUpClass (...)" name no loadable test and cannot be re-run alone.
            rerunnable = [
                t for t in unexplained
                if " " not in t and theirs["outcomes"].get(t, {}).get("outcome") not in ("hang", "crash")
            ]
            if rerunnable and args.rerun:
                rerun = run_child(python, module, column, rerunnable, args.timeout, log_dir)
                still = []
                for test_id in unexplained:
                    outcome = rerun["outcomes"].get(test_id, {}).get("outcome") if test_id in rerunnable else None
                    if outcome in PASSING:
                        if test_id in theirs["outcomes"]:
                            flaky.append((column, test_id, theirs["outcomes"][test_id]))
                        theirs["outcomes"][test_id] = rerun["outcomes"][test_id]
                    else:
                        still.append(test_id)
                unexplained = still
            for test_id in unexplained:
                outcome = theirs["outcomes"].get(test_id, {"outcome": "not run", "detail": None})
                problems.append((column, module, test_id, outcome["outcome"], outcome.get("detail")))

    print()
    print(f"CPython {sys.version.split()[0]} test_asyncio: stdlib loop vs ringloop "
          f"({time.monotonic() - started:.0f}s; logs in {log_dir})")
    print("cells: pass/fail/error/skip (ringloop loops the tests created: modules without one test "
          "futures, locks, mocks or their own loops)")
    print_table(modules, columns, report)
    for column in columns[1:]:
        loops = sum(report[m][column]["loops"] or 0 for m in modules)
        print(f"{column}: {loops} ringloop loops created")

    stale = sorted(
        (test_id, backend)
        for test_id, reasons in expected.items()
        for backend in reasons
        if all((test_id, b) not in expected_hits for b in (BACKENDS if backend == "all" else (backend,)))
        and any(f"ringloop-{b}" in columns for b in (BACKENDS if backend == "all" else (backend,)))
    )
    if expected_hits:
        print(f"{len(expected_hits)} known differences (listed in {EXPECTED_DIFFERENCES.name})")
    if stale:
        print(f"{len(stale)} entries of {EXPECTED_DIFFERENCES.name} now pass (remove them):")
        for test_id, backend in stale:
            print(f"  {test_id} {backend}")
    for column, test_id, first in flaky:
        print(f"FLAKY ({first['outcome']}, then passed on a re-run): {column} {test_id}")
        if args.details and first.get("detail"):
            for l in [l for l in first["detail"].strip().splitlines() if l.strip()][-2:]:
                print(f"      {l.strip()[:200]}")
    if problems:
        print(f"{len(problems)} tests pass on the stdlib loop but not on ringloop:")
        for column, module, test_id, outcome, detail in problems:
            print(f"  {column} {test_id}: {outcome}")
            if args.details and detail:
                last = [l for l in detail.strip().splitlines() if l.strip()][-3:]
                for l in last:
                    print(f"      {l.strip()[:200]}")

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({
                "python": sys.version,
                "columns": columns,
                "modules": report,
                "regressions": [
                    {"column": c, "module": m, "id": t, "outcome": o, "detail": d} for c, m, t, o, d in problems
                ],
                "flaky": [{"column": c, "id": t, "first": f} for c, t, f in flaky],
            }, out, indent=1)
        print(f"JSON: {args.json}")

    if args.check and problems:
        print("CHECK FAILED: ringloop passes fewer tests than the stdlib loop (see above); fix them "
              f"or list them with a reason in {EXPECTED_DIFFERENCES}")
        return 1
    if args.check:
        print("CHECK PASSED")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a test passing on the stdlib loop does not pass on ringloop "
                             "(and is not an expected difference)")
    parser.add_argument("--json", help="write the per-test report to this file")
    parser.add_argument("--modules", nargs="+", help="test_asyncio modules to run (default: all loop-agnostic ones)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--skip-stdlib", action="store_true", help="only the ringloop columns")
    parser.add_argument("--jobs", type=int, default=2, help="modules run in parallel (default 2)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per module run (default 180)")
    parser.add_argument("--no-rerun", dest="rerun", action="store_false",
                        help="do not re-run differing tests once before reporting them")
    parser.add_argument("--details", action="store_true", help="print the end of each difference's traceback")
    parser.add_argument("--log-dir", help="where child logs and results go (default: a new temp dir)")
    parser.add_argument("--python", help="interpreter for the children (default: this one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per finished module run")
    # Child mode (internal).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("stdlib", "ringloop"), help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    parser.add_argument("--tests", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
