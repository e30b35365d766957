#!/usr/bin/env python3
"""Python echo server for the comparison matrix: one script, every event loop, every API style.

    pyecho.py --loop {asyncio,uvloop,ringloop-io_uring,ringloop-epoll}
              --mode {protocol,buffered,streams,sock} --port PORT

Modes follow vmbench's echo servers (protocol, streams, sock) plus ``BufferedProtocol``:

- ``protocol``: ``asyncio.Protocol``, ``data_received`` writes the bytes back;
- ``buffered``: ``asyncio.BufferedProtocol`` receiving into one preallocated buffer;
- ``streams``: ``asyncio.start_server``, ``reader.read`` / ``writer.write`` + ``drain``;
- ``sock``: the loop's ``sock_accept`` / ``sock_recv`` / ``sock_sendall`` on raw sockets.

Prints ``listening on PORT`` (the real port when 0 is given) once serving, and runs until SIGINT or
SIGTERM. TCP_NODELAY is set on every connection. Exit status 3 means the requested loop cannot be
created here (not installed, or its backend unavailable); the reason goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

LOOPS = ("asyncio", "uvloop", "ringloop-io_uring", "ringloop-epoll")
MODES = ("protocol", "buffered", "streams", "sock")
READ_SIZE = 256 * 1024
EXIT_LOOP_UNAVAILABLE = 3


def make_loop(name: str) -> asyncio.AbstractEventLoop:
    """The event loop ``name``; raises ImportError/OSError when it cannot exist here."""
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name.startswith("ringloop-"):
        import ringloop

        backend = name.split("-", 1)[1]
        loop = ringloop.Loop(backend=backend)
        actual = getattr(loop, "backend", backend)
        if actual != backend:
            loop.close()
            raise OSError(f"ringloop gave backend {actual!r} instead of {backend!r}")
        return loop
    raise ValueError(f"unknown loop {name!r}")


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport.get_extra_info("socket"))
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport.get_extra_info("socket"))
        self.transport = transport
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        # The receive buffer is reused by the next read, so the transport gets its own copy.
        self.transport.write(self.view[:nbytes].tobytes())


async def echo_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    set_nodelay(writer.get_extra_info("socket"))
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def echo_sock(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    with conn:
        try:
            while True:
                data = await loop.sock_recv(conn, READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def serve_sock(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        set_nodelay(conn)
        task = loop.create_task(echo_sock(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--mode", choices=MODES, default="protocol")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=25000)
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        parser.error(f"invalid port {args.port}")

    try:
        loop = make_loop(args.loop)
    except (ImportError, OSError) as exc:
        print(f"pyecho: loop {args.loop} unavailable: {exc}", file=sys.stderr)
        return EXIT_LOOP_UNAVAILABLE
    asyncio.set_event_loop(loop)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(4096)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    if args.mode == "protocol":
        server = loop.run_until_complete(loop.create_server(EchoProtocol, sock=listener))
    elif args.mode == "buffered":
        server = loop.run_until_complete(loop.create_server(EchoBufferedProtocol, sock=listener))
    elif args.mode == "streams":
        server = loop.run_until_complete(asyncio.start_server(echo_streams, sock=listener, limit=READ_SIZE))
    else:
        server = None
        loop.create_task(serve_sock(loop, listener))

    for signo in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signo, loop.stop)
        except (NotImplementedError, RuntimeError):
            pass  # the default disposition ends the process, which is all a benchmark needs

    print(f"listening on {port}", flush=True)
    try:
        loop.run_forever()
    finally:
        if server is not None:
            server.close()
        # Connection tasks (sock and streams modes) end with the loop, not abandoned mid-await.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        listener.close()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
