"""The floor: the least work a pure-Python echo server over ringloop's C ABI can do.

    pyfloor.py --backend {io_uring,epoll} --port PORT

Not an event loop. It keeps only what any pure-Python loop serving an ``asyncio.Protocol`` must
do per message: one ``rl_poll`` per iteration into the shared event array, the events decoded
with ``struct.iter_unpack``, a ``bytes`` made from the receive buffer, a call of the protocol's
``data_received``, whose ``transport.write`` tries ``os.write`` first. Everything else a real
loop owes its users is left out: contexts, handles and the ready queue, timers, flow control,
exception reporting, the checks of a closing transport.

So its CPU per round trip bounds from below what ringloop's (or any) pure-Python loop can reach
in protocol mode on this machine; ``run_matrix.py`` measures it beside the real servers
(``py ringloop-io_uring/floor``) to show how far each one is from that bound.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections import deque

from ringloop._lib import EV_MORE, EVENT_SIZE, EVENT_STRUCT, READABLE, Reactor
from ringloop._loop import _new_reactor

EXIT_LOOP_UNAVAILABLE = 3
# Token = fd << 2 | kind.
RECV, SEND, ACCEPT = 0, 1, 2


class FloorTransport:
    """Just enough of a transport for an echo: write now, queue the rest with the reactor."""

    def __init__(self, reactor: Reactor, sock: socket.socket) -> None:
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.queue: deque[bytes] = deque()
        self.inflight: bytes | None = None
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.inflight is None:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                n = 0
            if n == len(data):
                return
            data = data[n:]
            self.inflight = data
            self.reactor.send(self.fd, data, self.fd << 2 | SEND)
        else:
            self.queue.append(data)

    def sent(self, result: int) -> bool:
        """A send's completion; whether the transport is now closed for good."""
        data = self.inflight
        assert data is not None
        if result < 0 or self.closed:
            self.inflight = None
            return self.close()
        rest = data[result:] if result < len(data) else (self.queue.popleft() if self.queue else None)
        self.inflight = rest
        if rest is not None:
            self.reactor.send(self.fd, rest, self.fd << 2 | SEND)
        return False

    def close(self) -> bool:
        """Closes the socket once no send reads from it; whether that happened now."""
        self.closed = True
        if self.inflight is None:
            self.sock.close()
            return True
        return False


class EchoProtocol:
    """The same protocol as pyecho.py's, minus the asyncio base class."""

    def __init__(self, transport: FloorTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def serve(backend: str, listener: socket.socket) -> None:
    # The loop's receive pool; an explicit backend the kernel lacks raises OSError.
    reactor = _new_reactor(backend, single_thread=True)
    protocols: dict[int, EchoProtocol] = {}
    listen_fd = listener.fileno()
    reactor.watch(listen_fd, READABLE, listen_fd << 2 | ACCEPT)
    events = reactor.events
    views = [events[: n * EVENT_SIZE] for n in range(reactor.capacity + 1)]
    iter_unpack = EVENT_STRUCT.iter_unpack
    buffer_bytes = reactor.buffer_bytes
    buffer_size = reactor.buffer_size
    poll = reactor.poll_wait
    poll_args = reactor.poll_forever_args
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    while not stop:
        n = poll(*poll_args)
        if n <= 0:
            continue  # -EINTR: a signal
        for token, result, flags, aux in iter_unpack(views[n]):
            if token & 3 == RECV and result > 0:
                # The steady state: all the floor pays per message.
                start = aux * buffer_size
                protocols[token >> 2].data_received(buffer_bytes[start : start + result])
                if not flags & EV_MORE:
                    reactor.recv(token >> 2, token)  # the multishot receive ended (no buffers)
            elif token & 3 == RECV:
                protocol = protocols.get(token >> 2)  # EOF or an error: the peer is gone
                if protocol is not None and protocol.transport.close():
                    del protocols[token >> 2]
            elif token & 3 == SEND:
                protocol = protocols.get(token >> 2)
                if protocol is not None and protocol.transport.sent(result):
                    del protocols[token >> 2]
            else:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    protocols[conn.fileno()] = EchoProtocol(FloorTransport(reactor, conn))
                    reactor.recv(conn.fileno(), conn.fileno() << 2 | RECV)
    for protocol in protocols.values():
        protocol.transport.sock.close()
    reactor.free()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("io_uring", "epoll"), default="io_uring")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=25000)
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(4096)
    listener.setblocking(False)
    try:
        serve(args.backend, listener)
    except (ImportError, OSError) as exc:
        print(f"pyfloor: backend {args.backend} unavailable: {exc}", file=sys.stderr)
        return EXIT_LOOP_UNAVAILABLE
    finally:
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
