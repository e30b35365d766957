#!/usr/bin/env python3
"""Python event-loop micro-benchmarks: stdlib asyncio vs uvloop vs ringloop, in one run.

    .venv/bin/python benches/pymicro.py [--quick] [--json PATH]

Each benchmark runs on every loop that can be created here (a missing one is reported, not
fatal), best of three; results are ops/s with ratios against asyncio and uvloop:

- call_soon:             callbacks scheduled from the loop with call_soon, run to the last;
- call_soon_threadsafe:  a thread schedules callbacks with call_soon_threadsafe as fast as it can;
- timer_cancel:          call_later(10 s) + cancel, then one iteration reaps the cancelled handles;
- sleep0:                `await asyncio.sleep(0)` iterations in one task;
- create_task_gather:    batches of 100 trivial tasks created and gathered;
- sock_recv_small:       5-byte sock_recv() calls on a socket whose bytes are already there;
- udp_pingpong:          one datagram echoed back and forth between two endpoints of the loop;
- pipe_read:             4 KiB chunks written to a pipe, read by connect_read_pipe's protocol;
- connect_accept:        streams connections set up and torn down: open_connection("127.0.0.1")
                         to a start_server() of the same loop, whose handler closes the writer; the
                         client reads the EOF and closes (client and server work per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "python-binding" / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

LOOPS = ("asyncio", "uvloop", "ringloop-io_uring", "ringloop-epoll")


def make_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    import ringloop

    return ringloop.Loop(backend=name.split("-", 1)[1])


def bench_call_soon(loop: asyncio.AbstractEventLoop, n: int) -> float:
    done = loop.create_future()
    count = 0

    def cb() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    def start() -> None:
        for _ in range(n):
            loop.call_soon(cb)

    t0 = time.perf_counter()
    loop.call_soon(start)
    loop.run_until_complete(done)
    return time.perf_counter() - t0


def bench_call_soon_threadsafe(loop: asyncio.AbstractEventLoop, n: int) -> float:
    done = loop.create_future()
    count = 0

    def cb() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    def producer() -> None:
        for _ in range(n):
            loop.call_soon_threadsafe(cb)

    thread = threading.Thread(target=producer)
    t0 = time.perf_counter()
    thread.start()
    loop.run_until_complete(done)
    elapsed = time.perf_counter() - t0
    thread.join()
    return elapsed


def bench_timer_cancel(loop: asyncio.AbstractEventLoop, n: int) -> float:
    def cb() -> None:
        raise AssertionError("a cancelled timer fired")

    async def body() -> None:
        for _ in range(n):
            loop.call_later(10.0, cb).cancel()
        await asyncio.sleep(0)  # one iteration, which drops the cancelled handles

    t0 = time.perf_counter()
    loop.run_until_complete(body())
    return time.perf_counter() - t0


def bench_sleep0(loop: asyncio.AbstractEventLoop, n: int) -> float:
    async def body() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    t0 = time.perf_counter()
    loop.run_until_complete(body())
    return time.perf_counter() - t0


def bench_gather(loop: asyncio.AbstractEventLoop, n: int) -> float:
    async def leaf(i: int) -> int:
        return i

    async def body() -> None:
        for _ in range(n // 100):
            results = await asyncio.gather(*[loop.create_task(leaf(i)) for i in range(100)])
            assert results[-1] == 99

    t0 = time.perf_counter()
    loop.run_until_complete(body())
    return time.perf_counter() - t0


def bench_sock_recv_small(loop: asyncio.AbstractEventLoop, n: int) -> float:
    size = 5
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        payload = b"x" * (size * n)

        async def body() -> None:
            sender = loop.create_task(loop.sock_sendall(a, payload))
            got = 0
            while got < len(payload):
                got += len(await loop.sock_recv(b, size))
            await sender

        t0 = time.perf_counter()
        loop.run_until_complete(body())
        return time.perf_counter() - t0


def bench_udp_pingpong(loop: asyncio.AbstractEventLoop, n: int) -> float:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.count = 0
            self.done = loop.create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            self.count += 1
            if self.count == n:
                self.done.set_result(None)
            else:
                self.transport.sendto(data)  # type: ignore[attr-defined]

    async def body() -> float:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        client, protocol = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname")
        )
        t0 = time.perf_counter()
        client.sendto(b"x" * 64)
        await protocol.done
        elapsed = time.perf_counter() - t0
        client.close()
        server.close()
        return elapsed

    return loop.run_until_complete(body())


def bench_pipe_read(loop: asyncio.AbstractEventLoop, n: int) -> float:
    chunk = b"z" * 4096

    class Reader(asyncio.Protocol):
        def __init__(self) -> None:
            self.got = 0
            self.more = loop.create_future()

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if not self.more.done():
                self.more.set_result(None)

    async def body() -> float:
        rfd, wfd = os.pipe()
        transport, reader = await loop.connect_read_pipe(Reader, os.fdopen(rfd, "rb", 0))
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(wfd, chunk)
            await reader.more
            reader.more = loop.create_future()
        elapsed = time.perf_counter() - t0
        os.close(wfd)
        transport.close()
        assert reader.got == n * len(chunk)
        return elapsed

    return loop.run_until_complete(body())


def bench_connect_accept(loop: asyncio.AbstractEventLoop, n: int) -> float:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def body() -> float:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        t0 = time.perf_counter()
        for _ in range(n):
            reader, writer = await asyncio.open_connection(host, port)
            assert await reader.read() == b""
            writer.close()
        elapsed = time.perf_counter() - t0
        server.close()
        await server.wait_closed()
        return elapsed

    return loop.run_until_complete(body())


BENCHES: list[tuple[str, Callable[[asyncio.AbstractEventLoop, int], float], int]] = [
    ("call_soon", bench_call_soon, 500_000),
    ("call_soon_threadsafe", bench_call_soon_threadsafe, 200_000),
    ("timer_cancel", bench_timer_cancel, 300_000),
    ("sleep0", bench_sleep0, 200_000),
    ("create_task_gather", bench_gather, 100_000),
    ("sock_recv_small", bench_sock_recv_small, 100_000),
    ("udp_pingpong", bench_udp_pingpong, 20_000),
    ("pipe_read", bench_pipe_read, 20_000),
    ("connect_accept", bench_connect_accept, 5_000),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/50 of the work, one repetition (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated subset of " + ",".join(LOOPS))
    args = parser.parse_args()
    loops = [name for name in args.loops.split(",") if name]
    unknown = [name for name in loops if name not in LOOPS]
    if unknown:
        parser.error(f"unknown loop(s): {', '.join(unknown)}")
    scale, repeats = (50, 1) if args.quick else (1, 3)

    available: dict[str, str] = {}
    for name in loops:
        try:
            make_loop(name).close()
            available[name] = "ok"
        except Exception as exc:  # ImportError, OSError, or the library's own error: report, go on
            available[name] = f"missing: {type(exc).__name__}: {exc}"

    results: dict[str, dict[str, float]] = {}
    failures = 0
    for bench_name, fn, n in BENCHES:
        n = max(n // scale, 100)
        results[bench_name] = {}
        for name in loops:
            if available[name] != "ok":
                continue
            best = float("inf")
            try:
                for _ in range(repeats):
                    loop = make_loop(name)
                    try:
                        best = min(best, fn(loop, n))
                    finally:
                        loop.close()
            except Exception as exc:
                print(f"{bench_name} on {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                failures += 1
                continue
            results[bench_name][name] = n / best

    width = max(len(n) for n in loops)
    print(f"Python {sys.version.split()[0]}; ops/s, best of {repeats}" + (" (quick)" if args.quick else ""))
    for name, status in available.items():
        if status != "ok":
            print(f"  {name}: {status[:160]}")
    for bench_name, per_loop in results.items():
        print(f"{bench_name}:")
        base_asyncio = per_loop.get("asyncio")
        base_uvloop = per_loop.get("uvloop")
        for name in loops:
            if name not in per_loop:
                continue
            ops = per_loop[name]
            ratios = []
            if base_asyncio:
                ratios.append(f"{ops / base_asyncio:5.2f}x asyncio")
            if base_uvloop:
                ratios.append(f"{ops / base_uvloop:5.2f}x uvloop")
            print(f"  {name:<{width}} {ops:>12,.0f} ops/s  {'  '.join(ratios)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"quick": args.quick, "loops": available, "ops_per_s": results}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.pop("RINGLOOP_BACKEND", None)
    sys.exit(main())
