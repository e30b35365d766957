"""Soak: many concurrent connections echoing random data through a ringloop server for a bounded
time, on both backends, through the C callback API (c-examples/echo_server) and the Python loop
(soak_pyserver.py).

    soak.py --connections N --seconds S [--servers c,python] [--backends io_uring,epoll]
            --echo-server PATH --echoload PATH [--python PATH]

For every server and backend: the server starts, ``echoload`` opens N connections and keeps them
echoing random payloads for S seconds (it compares every echoed byte with what it sent; a mismatch,
short echo or early EOF is an error), and the server's resident memory (VmRSS) is sampled once a
second. The run passes when echoload reports zero errors and a nonzero byte count, the server
survived and exits cleanly on SIGTERM, and its RSS at the end is within a tolerance of its RSS
after warm-up (memory flat under a steady load). One summary line per run, then a final
``N passed, N failed`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARMUP_S = 2
# RSS may grow this much after warm-up (allocator noise, a late-growing slab); a leak of even a few
# bytes per round trip over millions of them exceeds it.
RSS_SLACK_KIB = 16 * 1024
RSS_SLACK_RATIO = 0.10


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"soak: needs {needed} fds but the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def vm_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def start_server(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on "):
            return proc, int(line.split()[-1])
    proc.kill()
    _, err = proc.communicate()
    raise RuntimeError(f"server {cmd} did not start: exit {proc.returncode}: {err.strip()}")


def soak_one(name: str, cmd: list[str], backend: str, args: argparse.Namespace) -> bool:
    env = dict(os.environ, RINGLOOP_BACKEND=backend)
    try:
        server, port = start_server(cmd, env)
    except RuntimeError as exc:
        print(f"FAIL {name}/{backend}: {exc}", flush=True)
        return False
    samples: list[tuple[float, int]] = []
    connected_at: list[float] = []
    done = threading.Event()

    # Warm-up is counted from the moment every connection is open on the server's side (echoload
    # connects them one by one before the load starts, which takes a while for thousands).
    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(1.0):
            rss = vm_rss_kib(server.pid)
            now = time.monotonic() - t0
            if not connected_at and open_fds(server.pid) >= args.connections:
                connected_at.append(now)
            if rss is not None:
                samples.append((now, rss))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load = [
        args.echoload, "--port", str(port), "--connections", str(args.connections),
        "--threads", str(args.threads), "--size", str(args.size), "--pipeline", "1",
        "--warmup", str(WARMUP_S), "--duration", str(args.seconds), "--seed", "6",
        "--server-pid", str(server.pid), "--json",
    ]
    result = subprocess.run(load, capture_output=True, text=True, timeout=args.seconds + 600)
    done.set()
    sampler.join()
    alive = server.poll() is None
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    problems = []
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        report = {}
        problems.append(f"echoload exit {result.returncode}: {result.stderr.strip()[-500:]}")
    errors = report.get("errors", -1)
    round_trips = report.get("round_trips", 0)
    verified = round_trips * args.size
    if errors != 0:
        problems.append(f"{errors} errors ({report.get('first_error')})")
    if round_trips <= 0:
        problems.append("no round trip completed")
    if not alive:
        problems.append(f"server died during the run (exit {server.returncode})")
    elif server.returncode != 0:
        problems.append(f"server exit status {server.returncode} after SIGTERM")
    if connected_at:
        after_warmup = [rss for t, rss in samples if t >= connected_at[0] + WARMUP_S]
    else:
        after_warmup = []
        problems.append("the server never had every connection open at once")
    if len(after_warmup) >= 2:
        rss_start, rss_end = after_warmup[0], after_warmup[-1]
        rss_max = max(after_warmup)
        if rss_end > rss_start * (1 + RSS_SLACK_RATIO) + RSS_SLACK_KIB:
            problems.append(f"RSS grew from {rss_start} KiB to {rss_end} KiB")
    else:
        rss_start = rss_end = rss_max = samples[-1][1] if samples else -1
    status = "ok" if not problems else "FAIL"
    print(
        f"{status} {name}/{backend}: connections={args.connections} seconds={args.seconds} "
        f"round_trips={round_trips} bytes_verified={verified} errors={errors} "
        f"rss_after_warmup_kib={rss_start} rss_end_kib={rss_end} rss_max_kib={rss_max}"
        + ("" if not problems else " -- " + "; ".join(problems)),
        flush=True,
    )
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--servers", default="c,python")
    parser.add_argument("--backends", default="io_uring,epoll")
    parser.add_argument("--echo-server", required=True)
    parser.add_argument("--echoload", required=True)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    # Both ends of every connection live on this machine: the server's and echoload's fds, plus
    # slack. Children inherit the raised soft limit.
    raise_fd_limit(args.connections + 1024)
    servers = {
        "c": [args.echo_server, "0"],
        "python": [args.python, str(HERE / "soak_pyserver.py"), "--backend", "{backend}", "--port", "0"],
    }
    passed = failed = 0
    for name in args.servers.split(","):
        for backend in args.backends.split(","):
            cmd = [part.replace("{backend}", backend) for part in servers[name]]
            if soak_one(name, cmd, backend, args):
                passed += 1
            else:
                failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
