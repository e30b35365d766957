#!/usr/bin/env python3
"""System calls per echo round trip, counted by `strace -c -f` attached to the server.

    .venv/bin/python benches/syscalls.py [--quick] [--requests N] [--servers REGEX]

For each server: start it, warm it up briefly, attach strace, run echoload for a fixed number of
round trips (10 connections, 1 KiB, one message in flight each), detach, and divide. Connection
set-up (accept, setsockopt) is included and amortised over the run. strace slows the server a
lot; only the counts matter here, not the speed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import RunningServer, ServerUnavailable

DEFAULT_SERVERS = ("py ringloop-io_uring/protocol", "py ringloop-epoll/protocol", "py uvloop/protocol",
                   "py asyncio/protocol", "c ringloop callback/io_uring", "c ringloop callback/epoll",
                   "c ringloop raw token/io_uring", "c ringloop raw token/epoll", "c io_uring (liburing)",
                   "c epoll", "c libuv")


def parse_strace_summary(text: str) -> tuple[int, dict[str, int]]:
    """(total calls, calls per syscall) from `strace -c` output."""
    per_call: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not re.match(r"^\d+(\.\d+)?$", fields[0]):
            continue
        name = fields[-1]
        # Columns: % time, seconds, usecs/call, calls, [errors,] syscall.
        if not fields[3].isdigit():
            continue
        calls = int(fields[3])
        if name == "total":
            total = calls
        else:
            per_call[name] = calls
    if not total:
        total = sum(per_call.values())
    return total, per_call


def count(spec: benchlib.ServerSpec, requests: int) -> dict:
    try:
        server = RunningServer(spec)
    except ServerUnavailable as exc:
        return {"server": spec.name, "status": f"missing: {str(exc)[:120]}"}
    with server, tempfile.TemporaryDirectory() as tmp:
        warm = benchlib.echoload(server.port, size=1024, connections=10, requests=500, warmup=0)
        if warm.get("exit_code") != 0:
            return {"server": spec.name, "status": f"errors: {warm.get('first_error') or warm.get('stderr')}"}
        out = Path(tmp) / "strace.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(server.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # strace attaches asynchronously; give it time to seize every thread
        report = benchlib.echoload(server.port, size=1024, connections=10, requests=requests, warmup=0, timeout=300)
        tracer.send_signal(signal.SIGINT)
        try:
            _, err = tracer.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            tracer.kill()
            return {"server": spec.name, "status": "strace did not detach"}
        if report.get("exit_code") != 0:
            return {"server": spec.name, "status": f"errors: {report.get('first_error') or report.get('stderr')}"}
        if not out.exists():
            return {"server": spec.name, "status": f"strace failed: {err.decode(errors='replace')[-200:]}"}
        total, per_call = parse_strace_summary(out.read_text())
        round_trips = report["round_trips"]
        return {
            "server": spec.name,
            "status": "ok",
            "round_trips": round_trips,
            "syscalls": total,
            "per_round_trip": total / round_trips,
            "top": sorted(((n, c / round_trips) for n, c in per_call.items()), key=lambda x: -x[1])[:5],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few round trips, two servers (smoke test)")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--servers", default=None, help="regex over server names")
    args = parser.parse_args()
    if args.requests <= 0:
        parser.error("--requests must be positive")
    if not shutil.which("strace"):
        sys.exit("strace is not installed (apt-get install strace)")
    benchlib.need_echoload()
    specs = benchlib.python_servers(sys.executable) + benchlib.c_servers()
    if args.servers:
        chosen = [s for s in specs if re.search(args.servers, s.name)]
    elif args.quick:
        chosen = [s for s in specs if s.name in ("c epoll", "py ringloop-io_uring/protocol")]
    else:
        chosen = [s for n in DEFAULT_SERVERS for s in specs if s.name == n]
    requests = 2000 if args.quick else args.requests

    failed = False
    print(f"syscalls per echo round trip (strace -c -f on the server; 10 connections, 1 KiB, {requests} round trips)")
    for spec in chosen:
        result = count(spec, requests)
        if result["status"] != "ok":
            print(f"  {spec.name:<32} {result['status']}")
            failed |= result["status"].startswith(("errors", "strace"))
            continue
        top = ", ".join(f"{name} {per:.2f}" for name, per in result["top"])
        print(f"  {spec.name:<32} {result['per_round_trip']:6.2f} per round trip  ({top})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
