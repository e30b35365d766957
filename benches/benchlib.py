"""Shared plumbing of the benchmark scripts: where things are, starting and stopping echo servers,
running echoload, describing the machine.

Used by run_matrix.py (the comparison matrix), smoke.py (the quick run `make test` does) and
syscalls.py (syscalls per round trip). Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
OUT = BENCHES / "out"
BIN = OUT / "bin"
ECHOLOAD = ROOT / "target" / "release" / "echoload"
PYECHO = BENCHES / "servers" / "pyecho.py"
PYFLOOR = BENCHES / "servers" / "pyfloor.py"
PYTHON_SRC = ROOT / "python-binding" / "src"
LIB_DIR = ROOT / "target" / "release"

PY_LOOPS = ("asyncio", "uvloop", "ringloop-io_uring", "ringloop-epoll")
PY_MODES = ("protocol", "buffered", "streams", "sock")

# How long a server may take to print "listening on PORT".
START_TIMEOUT = 15.0


class ServerUnavailable(Exception):
    """The server cannot run here (not built, library missing, backend unavailable)."""


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """One echo server of the matrix."""

    name: str  # e.g. "py uvloop/protocol", "c uring_echo"
    group: str  # "python" or "c"
    argv: tuple[str, ...]  # with PORT as the placeholder for the port
    loop: str = ""
    mode: str = ""
    env: tuple[tuple[str, str], ...] = ()  # extra environment, e.g. RINGLOOP_BACKEND

    def command(self, port: int) -> list[str]:
        return [str(port) if a == "PORT" else a for a in self.argv]


def c_example(name: str) -> Optional[Path]:
    """A built ringloop C example (c-examples/ owns them), wherever its Makefile puts it."""
    for candidate in (ROOT / "c-examples" / "build" / name, ROOT / "c-examples" / name, ROOT / "c-examples" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def python_servers(python: str, loops=PY_LOOPS, modes=PY_MODES) -> list[ServerSpec]:
    specs = [
        ServerSpec(
            name=f"py {loop}/{mode}",
            group="python",
            argv=(python, str(PYECHO), "--loop", loop, "--mode", mode, "--port", "PORT"),
            loop=loop,
            mode=mode,
        )
        for mode in modes
        for loop in loops
    ]
    if "protocol" in modes and "ringloop-io_uring" in loops:
        # The least a pure-Python server over the library can cost (servers/pyfloor.py), right
        # after protocol mode, whose baselines it is compared with.
        floor = ServerSpec(
            name="py ringloop-io_uring/floor",
            group="python",
            argv=(python, str(PYFLOOR), "--backend", "io_uring", "--port", "PORT"),
            loop="ringloop-io_uring",
            mode="floor",
        )
        specs.insert(len(loops), floor)
    return specs


def baseline_mode(mode: str) -> str:
    """The mode whose asyncio and uvloop servers a Python server is compared with."""
    return "protocol" if mode == "floor" else mode


def c_servers() -> list[ServerSpec]:
    """The C servers; ones not built yet still appear (and are reported missing when run)."""
    specs = []
    for name, label in (("echo_server", "ringloop callback"), ("echo_poll", "ringloop raw token")):
        path = c_example(name)
        for backend in ("io_uring", "epoll"):
            specs.append(
                ServerSpec(
                    name=f"c {label}/{backend}",
                    group="c",
                    argv=(str(path) if path else f"<c-examples/{name} not built>", "PORT"),
                    loop=f"ringloop-{backend}",
                    mode=name,
                    env=(("RINGLOOP_BACKEND", backend),),
                )
            )
    for name, label in (("uring_echo", "io_uring (liburing)"), ("epoll_echo", "epoll"), ("uv_echo", "libuv")):
        specs.append(ServerSpec(name=f"c {label}", group="c", argv=(str(BIN / name), "PORT"), loop=name, mode=name))
    return specs


def server_env(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    # ringloop's Python package from the source tree (its loader finds target/release/libringloop.so),
    # and the shared library for the C examples.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYTHON_SRC), env.get("PYTHONPATH", "")) if p)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(LIB_DIR), env.get("LD_LIBRARY_PATH", "")) if p)
    env.pop("RINGLOOP_BACKEND", None)  # each server says which backend it wants
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class RunningServer:
    """A started echo server; use as a context manager so it is always stopped."""

    def __init__(self, spec: ServerSpec, cpu: Optional[int] = None, env: Optional[dict] = None, wrapper: tuple = ()):
        self.spec = spec
        argv = spec.command(0)
        if not Path(argv[0]).is_file():
            raise ServerUnavailable(f"{argv[0]} does not exist")
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the pid stays the server's
        argv = [*wrapper, *argv]
        self.stderr_path = OUT / "logs" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name) + ".err")
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.stderr_path, "wb")
        env = env or server_env(dict(spec.env))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, env=env, start_new_session=True)
        self.port = self._wait_listening()

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        seen = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                seen += chunk
                match = re.search(rb"listening on (\d+)", seen)
                if match:
                    return int(match.group(1))
            elif self.proc.poll() is not None:
                break
        self.stop()
        reason = self.stderr_tail() or f"no 'listening on' line within {START_TIMEOUT:.0f} s"
        raise ServerUnavailable(reason)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_ticks() -> Optional[list[int]]:
    """The machine's CPU time counters (the `cpu` line of /proc/stat), or None."""
    try:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: Optional[list[int]], after: Optional[list[int]]) -> Optional[float]:
    """The share of all CPU time between two cpu_ticks() that the hypervisor took (steal): on a
    shared VM the vCPUs stall for it, and the server and client with them."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest time is in user)
    return delta[7] / total if total > 0 else None


def echoload(
    port: int,
    *,
    size: int,
    connections: int,
    duration: float = 1.0,
    warmup: float = 0.3,
    requests: Optional[int] = None,
    pipeline: int = 1,
    server_pid: Optional[int] = None,
    cpu: Optional[int] = None,
    seed: int = 1,
    timeout: Optional[float] = None,
) -> dict:
    """Runs echoload once; returns its JSON report plus "exit_code" (and "stderr" on failure)."""
    argv = [str(ECHOLOAD), "--port", str(port), "--connections", str(connections), "--size", str(size),
            "--pipeline", str(pipeline), "--warmup", str(warmup), "--seed", str(seed), "--json"]
    if requests is not None:
        argv += ["--requests", str(requests)]
    else:
        argv += ["--duration", str(duration)]
    if server_pid is not None:
        argv += ["--server-pid", str(server_pid)]
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    limit = timeout if timeout is not None else warmup + (duration if requests is None else 60) + 30
    ticks_before = cpu_ticks()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"exit_code": None, "errors": None, "stderr": f"echoload did not finish within {limit:.0f} s"}
    ticks_after = cpu_ticks()
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {"errors": None}
    report["host_steal_share"] = steal_share(ticks_before, ticks_after)
    report["exit_code"] = done.returncode
    if done.returncode != 0:
        report["stderr"] = done.stderr.strip()
    return report


def machine() -> dict:
    """What the numbers were measured on."""

    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    model = ""
    for line in run("lscpu").splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    info = {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "libuv": run("pkg-config", "--modversion", "libuv"),
        "liburing": run("pkg-config", "--modversion", "liburing"),
        "ringloop_commit": run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        # Other work on the machine skews every number: say how busy it was.
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import uvloop  # noqa: F401  (only its version is wanted)

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    return info


def need_echoload() -> None:
    if not ECHOLOAD.is_file():
        sys.exit(f"{ECHOLOAD} not built: run `cargo build --release -p ringloop-benches --bin echoload`")
