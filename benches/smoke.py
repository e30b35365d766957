#!/usr/bin/env python3
"""The benchmark kit's smoke test (`make -C benches smoke`, part of `make test`).

Runs every tool once, briefly, so that none of them can rot, and fails on any error:

- echoload against each C reference server and the Python server (asyncio, and ringloop when it
  loads), small sizes, about a second each, zero errors required;
- echoload against deliberately broken servers: it must notice corrupted and truncated echoes;
- the ringloop C example servers when c-examples/ has built them;
- the libuv micro-benchmarks, the criterion benches (test mode: each once) and the Python
  micro-benchmarks in quick mode; the syscall counter when strace is installed.

Ends with the line "N passed, N failed" (and skipped), exit status 1 if anything failed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback

import benchlib
from benchlib import RunningServer, ServerSpec, ServerUnavailable

RESULTS: list[tuple[str, str, str]] = []  # (name, "passed"|"failed"|"skipped", detail)


class Skip(Exception):
    pass


def check(name: str):
    """Decorator that runs the check at once (in definition order) and records its outcome:
    returning passes (the return value is shown), Skip skips, any other exception fails."""

    def register(fn):
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            RESULTS.append((name, "passed", detail))
        except Skip as exc:
            RESULTS.append((name, "skipped", str(exc)))
        except Exception as exc:  # report every failure, keep going
            RESULTS.append((name, "failed", f"{type(exc).__name__}: {exc}"))
            traceback.print_exc()
        status, detail = RESULTS[-1][1], RESULTS[-1][2]
        print(f"{status.upper():>7}  {name}  ({time.monotonic() - t0:.1f} s) {detail}", flush=True)
        return fn

    return register


def expect_clean(report: dict, what: str) -> str:
    if report.get("exit_code") != 0 or report.get("errors") != 0:
        raise AssertionError(f"{what}: exit {report.get('exit_code')}, errors {report.get('errors')}: "
                             f"{report.get('first_error') or report.get('stderr')}")
    if not report.get("round_trips"):
        raise AssertionError(f"{what}: no round trip completed")
    return f"{report['requests_per_s']:,.0f} req/s"


def load_server(spec: ServerSpec) -> str:
    try:
        server = RunningServer(spec)
    except ServerUnavailable as exc:
        raise Skip(str(exc)[:160])
    with server:
        shown = []
        # Small messages with pipelining, then messages bigger than a socket buffer (short writes,
        # partial reads on both sides).
        for size, conns, pipeline in ((1000, 4, 4), (300_000, 2, 1)):
            report = benchlib.echoload(server.port, size=size, connections=conns, pipeline=pipeline,
                                       duration=0.4, warmup=0.1, server_pid=server.pid)
            shown.append(expect_clean(report, f"{spec.name} size {size}"))
        if not server.alive():
            raise AssertionError(f"{spec.name} exited during the run: {server.stderr_tail()}")
        return ", ".join(shown)


def broken_echo_server(behaviour: str) -> tuple[socket.socket, threading.Thread]:
    """A deliberately wrong echo server on a thread: 'corrupt' flips one byte after 3000 bytes,
    'hangup' closes the connection after 100 bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve_one(conn: socket.socket) -> None:
        seen = 0
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if behaviour == "hangup" and seen + len(data) >= 100:
                    return
                if behaviour == "corrupt" and seen <= 3000 < seen + len(data):
                    data = bytearray(data)
                    data[3000 - seen] ^= 0x55
                seen += len(data)
                try:
                    conn.sendall(data)
                except OSError:
                    return

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    return listener, thread


def expect_detected(behaviour: str, kind: str) -> str:
    listener, _ = broken_echo_server(behaviour)
    try:
        report = benchlib.echoload(listener.getsockname()[1], size=1000, connections=2, duration=0.3, warmup=0)
    finally:
        listener.close()
    if report.get("exit_code") != 1:
        raise AssertionError(f"echoload exited {report.get('exit_code')} against a '{behaviour}' server (want 1)")
    if not report.get("error_kinds", {}).get(kind):
        raise AssertionError(f"'{behaviour}' not reported as {kind}: {report.get('error_kinds')}")
    return f"{report['errors']} error(s), first: {report.get('first_error')}"


def run_quiet(argv: list[str], timeout: float, env=None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return done.stdout


def main() -> int:
    benchlib.need_echoload()
    started = time.monotonic()

    @check("echoload rejects bad arguments")
    def _():
        for bad in (["--connections", "0"], ["--size", "0"], ["--pipeline", "0"], ["--duration", "-1"],
                    ["--threads", "3", "--connections", "2"], ["--server-pid", "0"]):
            done = subprocess.run([str(benchlib.ECHOLOAD), *bad], capture_output=True, text=True, timeout=10)
            if done.returncode != 2 or "echoload:" not in done.stderr and "error:" not in done.stderr:
                raise AssertionError(f"{bad}: exit {done.returncode}, stderr {done.stderr!r}")

    @check("echoload detects corrupted echoes")
    def _():
        return expect_detected("corrupt", "mismatch")

    @check("echoload detects early hang-ups")
    def _():
        return expect_detected("hangup", "early_eof")

    for spec in benchlib.c_servers():
        if spec.loop == "ringloop":
            name = f"echoload vs {spec.name} (c-examples)"
        else:
            name = f"echoload vs {spec.name}"
        check(name)(lambda spec=spec: load_server(spec))

    for spec in benchlib.python_servers(sys.executable, loops=("asyncio", "ringloop-io_uring", "ringloop-epoll"), modes=("protocol",)):
        check(f"echoload vs {spec.name}")(lambda spec=spec: load_server(spec))

    @check("echoload --threads 2 --requests")
    def _():
        spec = next(s for s in benchlib.c_servers() if s.loop == "epoll_echo")
        with RunningServer(spec) as server:
            argv = [str(benchlib.ECHOLOAD), "--port", str(server.port), "--connections", "4", "--threads", "2",
                    "--requests", "5000", "--warmup", "0", "--size", "512", "--json"]
            out = run_quiet(argv, 60)
        import json

        report = json.loads(out)
        if report["round_trips"] != 5000 or report["errors"] != 0:
            raise AssertionError(f"round trips {report['round_trips']}, errors {report['errors']}")

    for program in ("uv_ping_pongs", "uv_million_timers", "uv_async_pummel", "uv_loop_count"):
        @check(f"micro {program} --quick")
        def _(program=program):
            path = benchlib.BIN / program
            if not path.is_file():
                raise AssertionError(f"{path} not built (make -C benches micro-c)")
            return run_quiet([str(path), "--quick"], 60).strip().splitlines()[-1]

    @check("criterion benches (test mode: each once)")
    def _():
        # `cargo test --benches` runs criterion in test mode (every benchmark once) in the dev
        # profile, whose dependencies `make test-rust` has already compiled: seconds, not minutes.
        out = run_quiet(["cargo", "test", "-q", "-p", "ringloop-benches", "--benches"], 600,
                        env={**os.environ, "CARGO_TERM_COLOR": "never"})
        ran = out.count("Success")
        if ran == 0:
            raise AssertionError(f"no benchmark ran:\n{out[-1000:]}")
        return f"{ran} benchmark(s) ran"

    @check("pymicro --quick")
    def _():
        out = run_quiet([sys.executable, str(benchlib.BENCHES / "pymicro.py"), "--quick"], 120)
        return f"{out.count('ops/s') - 1} measurement(s)"

    @check("pymicro_ab (HEAD against the work tree)")
    def _():
        if not (benchlib.BENCHES.parent / ".git").exists():
            raise Skip("not a git checkout")
        out = run_quiet(
            [sys.executable, str(benchlib.BENCHES / "pymicro_ab.py"), "sleep0", "-n", "200", "--rounds", "1", "--cpu", "-1",
             "--loops", "ringloop-epoll"],
            120,
        )
        rows = [line for line in out.splitlines() if " best " in line]
        names = {line[23:47].strip() for line in rows}  # the key column (pymicro_ab's format)
        wanted = {"asyncio", "ringloop-epoll base", "ringloop-epoll work"}
        if not wanted <= names:
            raise AssertionError(f"missing rows {sorted(wanted - names)}:\n{out[-1000:]}")
        return f"{len(rows)} rows"

    @check("syscalls per round trip (strace)")
    def _():
        if not shutil.which("strace"):
            raise Skip("strace not installed")
        out = run_quiet([sys.executable, str(benchlib.BENCHES / "syscalls.py"), "--quick"], 120)
        return out.strip().splitlines()[-1] if out.strip() else ""

    passed = sum(1 for _, s, _ in RESULTS if s == "passed")
    failed = sum(1 for _, s, _ in RESULTS if s == "failed")
    skipped = sum(1 for _, s, _ in RESULTS if s == "skipped")
    print(f"benches smoke: {time.monotonic() - started:.0f} s")
    for name, status, detail in RESULTS:
        if status == "failed":
            print(f"FAILED: {name}: {detail}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
