"""Run under ``no_uring``: the Python loop without io_uring. The default ringloop loop must come
up on epoll and run a round trip; asking for io_uring must raise an error that says the backend is
unavailable (today a RuntimeError naming RL_EUNSUPPORTED). Prints ``fallback_python: N passed, 0 failed``."""

from __future__ import annotations

import asyncio
import os
import sys

import ringloop


def main() -> int:
    os.environ.pop("RINGLOOP_BACKEND", None)
    passed = 0
    loop = ringloop.new_event_loop()
    try:
        assert loop.backend == "epoll", f"default backend is {loop.backend!r}, not epoll"
        passed += 1

        async def round_trip() -> bytes:
            rsock, wsock = __import__("socket").socketpair()
            reader, writer = await asyncio.open_connection(sock=rsock)
            wsock.sendall(b"over epoll")
            data = await reader.readexactly(10)
            writer.close()
            wsock.close()
            return data

        assert loop.run_until_complete(round_trip()) == b"over epoll"
        passed += 1
    finally:
        loop.close()
    try:
        ringloop.Loop(backend="io_uring").close()
    except (OSError, RuntimeError) as exc:
        text = str(exc)
        print(f"fallback_python: forcing io_uring: {type(exc).__name__}: {text}", file=sys.stderr)
        assert "unavailable" in text, text
        passed += 1
    else:
        raise AssertionError("io_uring loop created although io_uring_setup is denied")
    print(f"fallback_python: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
