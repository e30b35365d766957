"""Helpers shared by the tests (imported as ``support``; tests/ is on sys.path under pytest)."""

import asyncio
import gc
import os
import socket
import sys

# Default bound for one scenario inside a test; pytest-timeout bounds the whole test.
SCENARIO_TIMEOUT = 60.0


def run(loop, coro, timeout=SCENARIO_TIMEOUT):
    """Run ``coro`` to completion on ``loop``, bounded by ``timeout`` seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def open_fds():
    """The set of this process's open file descriptors."""
    gc.collect()
    return set(int(fd) for fd in os.listdir("/proc/self/fd"))


def has_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def python_at_least(*version):
    return sys.version_info >= version
