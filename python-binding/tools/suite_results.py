"""Per-test outcomes of a foreign unittest suite, passed from a child process as JSON lines.

Shared by run_cpython_asyncio.py and run_uvloop_tests.py (each imports it as a sibling module:
the directory of the running script is on ``sys.path``, in the parent and in the children it
starts). The child writes one JSON object per line: ``{"event": "start", "id": ...}`` before a
test runs (so the parent knows which test a crash was in), ``{"event": "outcome", ...}`` per
outcome, and whatever else the script adds (a plan, the run's stats). The parent reads the lines
back with ``read_json_lines``; a line cut short by a crash is skipped.

``JsonLinesResult`` turns unittest's callbacks into outcome names (``pass``, ``fail``, ``error``,
``skip``, ``xfail``, ``unexpected-success``) and hands each to one hook, ``_record``, which each
script defines: how an outcome, and a subtest's, is recorded is where the two scripts differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import traceback
import unittest
from pathlib import Path


def iter_tests(suite):
    """The test cases of a (nested) suite, in order."""
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def child_environment(column):
    """The environment of a child process that runs the suite on ``column`` (``stdlib`` or
    ``ringloop-<backend>``): the backend forced for ringloop, output unbuffered, and relative
    ``PYTHONPATH`` entries and ``RINGLOOP_LIBRARY`` made absolute: the child runs in another
    directory (run_logged), where ``PYTHONPATH=../src`` would silently import whatever
    ``ringloop`` is installed instead of the one meant."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(entry) if entry else entry
            for entry in env["PYTHONPATH"].split(os.pathsep)
        )
    if env.get("RINGLOOP_LIBRARY"):
        env["RINGLOOP_LIBRARY"] = os.path.abspath(env["RINGLOOP_LIBRARY"])
    env.pop("RINGLOOP_BACKEND", None)
    if column.startswith("ringloop-"):
        env["RINGLOOP_BACKEND"] = column.split("-", 1)[1]
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_logged(command, env, log, timeout):
    """Runs ``command`` with its output in the file ``log``; returns its exit status, or
    ``"timeout"`` after killing its whole process group at ``timeout`` seconds.

    The child runs in a directory of its own, which is also its ``TMPDIR`` and is removed
    afterwards: some suite tests leave files behind (uvloop's ``test_udp`` binds Unix sockets
    under the temp directory and never unlinks them), and a child killed at the timeout cannot
    clean up at all."""
    with open(log, "wb") as log_file, tempfile.TemporaryDirectory(prefix="suite-child-") as scratch:
        env = dict(env, TMPDIR=scratch)
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   cwd=scratch, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            return "timeout"


def write_record(out, record):
    """Writes one JSON line and flushes it, so that a crash right after loses nothing."""
    out.write(json.dumps(record) + "\n")
    out.flush()


def read_json_lines(path):
    """The records of a JSON-lines file, in order; none if it does not exist."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash


class JsonLinesResult(unittest.TestResult):
    """A unittest result that writes a ``start`` record per test and passes every outcome to
    ``_record``. Combine it with ``unittest.TextTestResult`` (listed after it) for the usual
    console output as well.
    """

    #: How much of the end of a traceback an outcome keeps.
    detail_chars = 4000

    def __init__(self, records, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = records

    def _emit(self, record):
        write_record(self.records, record)

    def _detail(self, err):
        return "".join(traceback.format_exception(*err))[-self.detail_chars:]

    def _record(self, test, outcome, detail=None, parent=None):
        """Records ``test``'s ``outcome``. ``detail`` is the end of the traceback (the reason of a
        skip); ``parent`` is the test case when ``test`` is one of its subtests."""
        raise NotImplementedError

    def startTest(self, test):
        super().startTest(test)
        # Written before the test runs, so the parent knows which test a crash was in.
        self._emit({"event": "start", "id": test.id()})

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "fail", self._detail(err))

    def addError(self, test, err):
        super().addError(test, err)
        # setUpClass/tearDownModule errors arrive with a stand-in test whose id names the class.
        self._record(test, "error", self._detail(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        # A skipped subtest arrives as itself, its test case in ``test_case``.
        self._record(test, "skip", reason, getattr(test, "test_case", None))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "xfail", self._detail(err))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected-success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is None:
            self._record(subtest, "pass", parent=test)
            return
        outcome = "fail" if issubclass(err[0], test.failureException) else "error"
        self._record(subtest, outcome, self._detail(err), test)


BACKENDS = ("io_uring", "epoll")


def load_expected_differences(path):
    """{test id: {backend or "all": reason}} from an expected-differences file: one
    ``<test id> <all|io_uring|epoll> <reason>`` per line, ``#`` comments. A test id covers its
    subtests."""
    expected = {}
    if not path.exists():
        return expected
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[1] not in ("all", *BACKENDS):
            raise SystemExit(f"{path}:{number}: expected '<test id> <all|io_uring|epoll> <reason>'")
        expected.setdefault(parts[0], {})[parts[1]] = parts[2]
    return expected
