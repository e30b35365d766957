"""Context variables in protocol callbacks.

asyncio runs a transport's protocol callbacks in (copies of) the context the transport was
created in, and so does uvloop: a request id or tracing span set before create_connection() or
create_server() is seen in connection_made(), data_received(), eof_received() and
connection_lost(), and what a callback sets stays with its connection.
"""

import asyncio
import contextvars
import socket

import pytest

from support import run

request_id = contextvars.ContextVar("request_id", default="outside")


class RecordingProtocol(asyncio.Protocol):
    """Records request_id as each callback sees it; echoes (server side) or collects."""

    def __init__(self, loop, echo):
        self.echo = echo
        self.seen = {}
        self.received = bytearray()
        self.done = loop.create_future()

    def _record(self, name):
        self.seen.setdefault(name, request_id.get())

    def connection_made(self, transport):
        self.transport = transport
        self._record("connection_made")

    def data_received(self, data):
        self._record("data_received")
        self.received += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self._record("eof_received")
        if self.echo:
            self.transport.close()
            return True
        return False

    def connection_lost(self, exc):
        self._record("connection_lost")
        self.done.set_result(None)


class RecordingBufferedProtocol(RecordingProtocol, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint):
        self._record("get_buffer")
        self.buffer = bytearray(65536)
        return self.buffer

    def buffer_updated(self, nbytes):
        self._record("buffer_updated")
        data = bytes(self.buffer[:nbytes])
        self.received += data
        if self.echo:
            self.transport.write(data)


CALLBACKS = {
    RecordingProtocol: {"connection_made", "data_received", "eof_received", "connection_lost"},
    RecordingBufferedProtocol: {
        "connection_made",
        "get_buffer",
        "buffer_updated",
        "eof_received",
        "connection_lost",
    },
}


async def _connected_pair(loop, family, tmp_path, server_protocol, client_protocol):
    if family == "tcp":
        server = await loop.create_server(lambda: server_protocol, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()[:2]
        transport, _ = await loop.create_connection(lambda: client_protocol, *address)
    else:
        path = str(tmp_path / "context.sock")
        server = await loop.create_unix_server(lambda: server_protocol, path)
        transport, _ = await loop.create_unix_connection(lambda: client_protocol, path)
    return server, transport


@pytest.mark.parametrize("protocol_class", list(CALLBACKS), ids=["Protocol", "BufferedProtocol"])
@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_protocol_callbacks_run_in_the_context_their_transport_was_created_in(
    loop, protocol_class, family, tmp_path
):
    server_protocol = protocol_class(loop, echo=True)
    client_protocol = protocol_class(loop, echo=False)

    async def scenario():
        request_id.set("request-42")  # this task's context, which the transports copy
        server, transport = await _connected_pair(
            loop, family, tmp_path, server_protocol, client_protocol
        )
        transport.write(b"hello")
        while len(client_protocol.received) < 5:
            await asyncio.sleep(0.001)
        transport.write_eof()
        await client_protocol.done
        await server_protocol.done
        transport.close()
        server.close()
        await server.wait_closed()
        assert bytes(client_protocol.received) == b"hello"

    token = request_id.set("loop-runner")  # the context the loop itself runs in
    try:
        run(loop, scenario())
        assert request_id.get() == "loop-runner"
    finally:
        request_id.reset(token)
    expected = {name: "request-42" for name in CALLBACKS[protocol_class]}
    assert client_protocol.seen == expected
    assert server_protocol.seen == expected


class TaggingProtocol(asyncio.Protocol):
    """Sets request_id in its first data_received() and checks that every later callback of
    the same connection sees it."""

    def __init__(self, loop, tag, expected_messages):
        self.tag = tag
        self.expected_messages = expected_messages
        self.seen_before_tagging = None
        self.seen = []
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.seen_before_tagging is None:
            self.seen_before_tagging = request_id.get()
            request_id.set(self.tag)
        self.seen.append(request_id.get())
        self.transport.write(data)

    def eof_received(self):
        self.seen.append(request_id.get())
        self.transport.close()
        return True

    def connection_lost(self, exc):
        self.done.set_result(None)


def test_a_variable_set_in_data_received_stays_with_its_connection(loop):
    protocols = []

    def factory():
        protocol = TaggingProtocol(loop, f"connection-{len(protocols)}", 3)
        protocols.append(protocol)
        return protocol

    async def client(address):
        reader, writer = await asyncio.open_connection(*address)
        for _ in range(3):
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    async def scenario():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()[:2]
        # Interleaved connections: each one's value must not leak into the others.
        await asyncio.gather(*(client(address) for _ in range(4)))
        await asyncio.gather(*(p.done for p in protocols))
        server.close()
        await server.wait_closed()
        assert request_id.get() == "outside"  # nothing leaked into the serving task

    run(loop, scenario())
    assert len(protocols) == 4
    for protocol in protocols:
        assert protocol.seen_before_tagging == "outside"
        # Three messages (maybe coalesced into fewer reads), then EOF: all tagged.
        assert protocol.seen and set(protocol.seen) == {protocol.tag}
    assert request_id.get() == "outside"


def test_a_server_protocol_factory_runs_in_the_context_create_server_was_called_in(loop):
    seen = []

    def factory():
        seen.append(request_id.get())
        return asyncio.Protocol()

    async def scenario():
        request_id.set("serving")
        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()[:2]
        with socket.create_connection(address) as sock:
            sock.setblocking(False)
            while not seen:
                await asyncio.sleep(0.001)
        server.close()
        await server.wait_closed()

    run(loop, scenario())
    assert seen == ["serving"]
