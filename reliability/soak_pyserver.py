"""The Python side of the soak: an ``asyncio.Protocol`` echo server on a ringloop loop.

    soak_pyserver.py --backend {io_uring,epoll} --port PORT

Prints ``listening on PORT`` once serving and runs until SIGTERM or SIGINT. Exit status 3 when the
requested backend cannot be created here.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signo in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signo, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await stop
    server.close()
    await server.wait_closed()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("io_uring", "epoll"), required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    import ringloop

    try:
        loop = ringloop.Loop(backend=args.backend)
    except (OSError, RuntimeError) as exc:
        print(f"ringloop backend {args.backend} unavailable: {exc}", file=sys.stderr)
        return 3
    try:
        loop.run_until_complete(serve(args.port))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
