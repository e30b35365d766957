"""TCP: protocols, buffered protocols, streams, connection and server options, flow control."""

import asyncio
import os
import random
import socket
import sys

import pytest

from support import run

PAYLOAD_SIZES = [1, 2, 1000, 16 * 1024 + 3, 65536, 300_001, 1024 * 1024]


def random_payload(size, seed):
    return random.Random(seed).randbytes(size) if hasattr(random.Random, "randbytes") else os.urandom(size)


class EchoServerProtocol(asyncio.Protocol):
    """Echoes everything; closes after the peer's EOF once the echo is flushed."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()
        return True


class CollectingClientProtocol(asyncio.Protocol):
    """Collects everything it receives; ``done`` resolves with the bytes at connection_lost."""

    def __init__(self, loop):
        self.received = bytearray()
        self.done = loop.create_future()
        self.made = loop.create_future()
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.received += data

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        if exc is None:
            self.done.set_result(bytes(self.received))
        else:
            self.done.set_exception(exc)


async def start_echo_server(loop, host="127.0.0.1", **kwargs):
    server = await loop.create_server(EchoServerProtocol, host, 0, **kwargs)
    return server, server.sockets[0].getsockname()[:2]


async def echo_once(loop, address, payload, **kwargs):
    transport, protocol = await loop.create_connection(
        lambda: CollectingClientProtocol(loop), *address, **kwargs
    )
    transport.write(payload)
    if transport.can_write_eof():
        transport.write_eof()
    return await protocol.done


def test_protocol_echo_is_byte_exact_for_many_sizes_and_concurrent_connections(loop):
    async def main():
        server, address = await start_echo_server(loop)
        payloads = [random_payload(size, seed) for seed, size in enumerate(PAYLOAD_SIZES)]
        echoed = await asyncio.gather(*(echo_once(loop, address, p) for p in payloads))
        for payload, echo in zip(payloads, echoed):
            assert len(echo) == len(payload)
            assert echo == payload
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_many_small_writes_arrive_in_order(loop):
    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), *address)
        chunks = [b"%06d|" % i for i in range(20000)]
        for chunk in chunks:
            transport.write(chunk)
        transport.writelines([b"tail-", bytearray(b"bytearray-"), memoryview(b"memoryview")])
        transport.write_eof()
        assert await protocol.done == b"".join(chunks) + b"tail-bytearray-memoryview"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_transport_extra_info_and_state(loop):
    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), *address)
        assert transport.get_extra_info("peername")[:2] == address
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        sock = transport.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # asyncio sets TCP_NODELAY
        assert transport.get_extra_info("no such key", "default") == "default"
        assert transport.get_protocol() is protocol
        assert not transport.is_closing()
        assert transport.is_reading()
        transport.close()
        assert transport.is_closing()
        await protocol.done
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_abort_drops_buffered_data_and_reports_connection_lost(loop):
    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), *address)
        transport.abort()
        assert transport.is_closing()
        assert await protocol.done == b""
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_connection_refused_raises(loop):
    async def main():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)

    run(loop, main())


@pytest.mark.parametrize("kind", ["protocol", "buffered"])
def test_peer_reset_is_reported_to_connection_lost(loop, kind):
    async def main():
        accepted = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        server = await loop.create_server(Server, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        client = CollectingClientProtocol if kind == "protocol" else CollectingBufferedProtocol
        transport, protocol = await loop.create_connection(lambda: client(loop), *address)
        server_transport = await accepted
        sock = server_transport.get_extra_info("socket")
        # SO_LINGER 0 makes close() send RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        server_transport.abort()
        result = await asyncio.gather(protocol.done, return_exceptions=True)
        assert result[0] == b"" or isinstance(result[0], ConnectionResetError), result
        server.close()
        await server.wait_closed()

    run(loop, main())


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def __init__(self):
        self.buffer = bytearray(1000)  # deliberately small: data arrives in many pieces

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buffer[:nbytes]))

    def eof_received(self):
        self.transport.close()
        return True


class CollectingBufferedProtocol(asyncio.BufferedProtocol):
    def __init__(self, loop):
        self.storage = bytearray(4096)
        self.received = bytearray()
        self.done = loop.create_future()
        self.sizehints = []

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.sizehints.append(sizehint)
        return memoryview(self.storage)[:1024]

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= 1024
        self.received += self.storage[:nbytes]

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        if exc is None:
            self.done.set_result(bytes(self.received))
        else:
            self.done.set_exception(exc)


def test_buffered_protocol_on_both_ends_is_byte_exact(loop):
    async def main():
        server = await loop.create_server(EchoBufferedProtocol, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()

        async def one(size, seed):
            payload = random_payload(size, seed)
            transport, protocol = await loop.create_connection(lambda: CollectingBufferedProtocol(loop), *address)
            transport.write(payload)
            transport.write_eof()
            assert await protocol.done == payload
            assert all(isinstance(h, int) for h in protocol.sizehints)

        await asyncio.gather(*(one(size, seed) for seed, size in enumerate([1, 4096, 100_000, 1024 * 1024])))
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_buffered_protocol_get_buffer_failure_is_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))

    class Broken(CollectingBufferedProtocol):
        def get_buffer(self, sizehint):
            raise RuntimeError("no buffer")

    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(lambda: Broken(loop), *address)
        transport.write(b"x")
        with pytest.raises(RuntimeError):
            await protocol.done
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert any(isinstance(c.get("exception"), RuntimeError) for c in contexts)


def test_buffered_protocol_is_given_the_bytes_as_asyncio_gives_them(loop):
    # asyncio asks get_buffer(-1) right before each recv_into() and hands buffer_updated() what
    # that one read brought: the bytes go from the socket into the protocol's buffer directly.
    async def main():
        server, address = await start_echo_server(loop)
        payload = random_payload(300_000, 5)
        transport, protocol = await loop.create_connection(lambda: CollectingBufferedProtocol(loop), *address)
        transport.write(payload)
        transport.write_eof()
        assert await asyncio.wait_for(protocol.done, 30) == payload
        assert len(protocol.sizehints) >= len(payload) // 1024
        assert set(protocol.sizehints) == {-1}
        server.close()
        await server.wait_closed()

    run(loop, main())


class Handover(asyncio.Protocol):
    """Hands the connection to ``target`` in connection_made(), as start_tls() swaps protocols:
    the transport was made for this plain Protocol."""

    def __init__(self, target):
        self.target = target

    def connection_made(self, transport):
        transport.set_protocol(self.target)
        self.target.connection_made(transport)

    def data_received(self, data):
        raise AssertionError("the first protocol received data")


@pytest.mark.parametrize("switched", [False, True], ids=["buffered-from-the-start", "switched-to-buffered"])
def test_buffered_protocol_pausing_inside_buffer_updated_loses_nothing(loop, switched):
    # A 100-byte buffer and a pause after every fill. "switched": the connection starts with a
    # plain Protocol that hands it to the BufferedProtocol in connection_made() (as start_tls()
    # swaps protocols), so bytes may already have been received for the first protocol: where a
    # receive brought more than fits, the rest must wait for resume_reading() and then arrive
    # first, in order.
    class Pausing(CollectingBufferedProtocol):
        def get_buffer(self, sizehint):
            self.sizehints.append(sizehint)
            return memoryview(self.storage)[:100]

        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.transport.pause_reading()
            loop.call_later(0.0005 if len(self.sizehints) % 7 else 0, self.transport.resume_reading)

    async def main():
        server, address = await start_echo_server(loop)
        payload = random_payload(200_000, 11)
        pausing = Pausing(loop)
        factory = (lambda: Handover(pausing)) if switched else (lambda: pausing)
        transport, _ = await loop.create_connection(factory, *address)
        assert transport.get_protocol() is pausing
        transport.write(payload)
        await asyncio.sleep(0.05)
        transport.write_eof()
        received = await asyncio.wait_for(pausing.done, 30)
        assert len(received) == len(payload)
        assert received == payload
        if -1 not in pausing.sizehints:  # a loop that says how much came: some did not fit
            assert any(hint > 100 for hint in pausing.sizehints)
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("switched", [False, True], ids=["buffered-from-the-start", "switched-to-buffered"])
def test_buffered_protocol_giving_an_empty_buffer_fails_the_connection(loop, switched):
    # asyncio: get_buffer() returning an empty buffer is the protocol's fatal error, reported
    # like a get_buffer() that raised. "switched": the transport was made for a plain Protocol,
    # so ringloop copies received bytes into the buffer instead of reading into it.
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))

    class Empty(CollectingBufferedProtocol):
        def get_buffer(self, sizehint):
            return bytearray()

    async def main():
        server, address = await start_echo_server(loop)
        empty = Empty(loop)
        factory = (lambda: Handover(empty)) if switched else (lambda: empty)
        transport, _ = await loop.create_connection(factory, *address)
        transport.write(b"ping")
        with pytest.raises(RuntimeError, match="empty buffer"):
            await asyncio.wait_for(empty.done, 10)
        assert transport.is_closing()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert any(
        isinstance(c.get("exception"), RuntimeError) and "get_buffer" in c.get("message", "") for c in contexts
    ), contexts


def test_switching_from_a_buffered_protocol_to_a_plain_one_mid_stream_loses_nothing(loop):
    # The reverse of the handover above: a transport made for a BufferedProtocol (ringloop reads
    # it on readiness) given a plain Protocol after 50 KB, which then receives bytes objects.
    class Plain(asyncio.Protocol):
        received_by_plain = 0

        def __init__(self, sink, done):
            self.sink = sink
            self.done = done

        def data_received(self, data):
            assert type(data) is bytes
            Plain.received_by_plain += len(data)
            self.sink += data

        def connection_lost(self, exc):
            if exc is None:
                self.done.set_result(bytes(self.sink))
            else:
                self.done.set_exception(exc)

    class BufferedFirst(asyncio.BufferedProtocol):
        def __init__(self):
            self.storage = bytearray(1000)
            self.sink = bytearray()
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.storage

        def buffer_updated(self, nbytes):
            self.sink += self.storage[:nbytes]
            if len(self.sink) >= 50_000:
                self.transport.set_protocol(Plain(self.sink, self.done))

        def connection_lost(self, exc):
            raise AssertionError("connection_lost() went to the first protocol")

    async def main():
        server, address = await start_echo_server(loop)
        payload = random_payload(400_000, 17)
        first = BufferedFirst()
        transport, _ = await loop.create_connection(lambda: first, *address)
        transport.write(payload)
        transport.write_eof()
        received = await asyncio.wait_for(first.done, 30)
        assert len(received) == len(payload)
        assert received == payload
        assert Plain.received_by_plain >= 100_000  # most of it came after the switch
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_buffered_protocol_buffer_updated_failure_is_reported_and_closes(loop):
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))

    class Broken(CollectingBufferedProtocol):
        def buffer_updated(self, nbytes):
            raise ValueError("cannot take it")

    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(lambda: Broken(loop), *address)
        transport.write(b"hello")
        with pytest.raises(ValueError):
            await asyncio.wait_for(protocol.done, 10)
        assert transport.is_closing()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert any(isinstance(c.get("exception"), ValueError) for c in contexts)
    assert any("buffer_updated" in c.get("message", "") for c in contexts)


async def stream_echo_handler(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


def test_streams_readline_readexactly_readuntil_and_eof(loop):
    async def main():
        server = await asyncio.start_server(stream_echo_handler, "127.0.0.1", 0, limit=1024 * 1024)
        address = server.sockets[0].getsockname()
        async with server:
            reader, writer = await asyncio.open_connection(*address, limit=1024 * 1024)
            writer.write(b"hello\n")
            assert await reader.readline() == b"hello\n"
            writer.write(b"0123456789\n")
            assert await reader.readexactly(4) == b"0123"
            assert await reader.readuntil(b"89") == b"456789"
            assert await reader.readline() == b"\n"
            big = random_payload(256 * 1024, 7).replace(b"\n", b"_") + b"\n"
            writer.write(big)
            await writer.drain()
            assert await reader.readexactly(len(big)) == big
            writer.write_eof()
            assert await reader.read() == b""
            assert reader.at_eof()
            with pytest.raises(asyncio.IncompleteReadError):
                await reader.readexactly(1)
            writer.close()
            await writer.wait_closed()
            assert writer.is_closing()

    run(loop, main())


def test_streams_many_concurrent_clients(loop):
    async def main():
        server = await asyncio.start_server(stream_echo_handler, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()

        async def client(index):
            reader, writer = await asyncio.open_connection(*address)
            lines = [b"client %d line %d\n" % (index, i) for i in range(200)]
            writer.writelines(lines)
            await writer.drain()
            received = [await reader.readline() for _ in lines]
            writer.close()
            await writer.wait_closed()
            return received == lines

        results = await asyncio.gather(*(client(i) for i in range(20)))
        server.close()
        await server.wait_closed()
        return results

    assert run(loop, main()) == [True] * 20


def test_create_connection_with_local_addr(loop):
    async def main():
        server, address = await start_echo_server(loop)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
        transport, protocol = await loop.create_connection(
            lambda: CollectingClientProtocol(loop), *address, local_addr=("127.0.0.1", local_port)
        )
        assert transport.get_extra_info("sockname") == ("127.0.0.1", local_port)
        transport.write(b"via local_addr")
        transport.write_eof()
        assert await protocol.done == b"via local_addr"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_with_an_existing_socket(loop):
    async def main():
        server, address = await start_echo_server(loop)
        sock = socket.socket()
        sock.connect(address)  # blocking connect before handing the socket over
        transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), sock=sock)
        assert transport.get_extra_info("socket").fileno() == sock.fileno()
        assert not sock.getblocking()  # the loop made it non-blocking
        transport.write(b"over sock=")
        transport.write_eof()
        assert await protocol.done == b"over sock="
        assert sock.fileno() == -1 or transport.is_closing()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_rejects_conflicting_arguments(loop):
    async def main():
        with socket.socket() as sock:
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, sock=sock)
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol)
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, server_hostname="x")

    run(loop, main())


def test_create_connection_with_happy_eyeballs_delay(loop):
    async def main():
        # Listen on IPv4 only: where "localhost" also resolves to ::1, that attempt is refused
        # and the connection must fall back to 127.0.0.1.
        server, (host, port) = await start_echo_server(loop, host="127.0.0.1")
        for interleave in (None, 1):
            echoed = await echo_once(
                loop, ("localhost", port), b"eyeballs", happy_eyeballs_delay=0.05, interleave=interleave
            )
            assert echoed == b"eyeballs"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_server_sockets_and_reuse_port(loop):
    async def main():
        first = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0, reuse_port=True)
        port = first.sockets[0].getsockname()[1]
        second = await loop.create_server(EchoServerProtocol, "127.0.0.1", port, reuse_port=True)
        for server in (first, second):
            (sock,) = server.sockets
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert sock.getsockname() == ("127.0.0.1", port)
            assert server.get_loop() is loop
            assert server.is_serving()
        for i in range(10):
            assert await echo_once(loop, ("127.0.0.1", port), b"x%d" % i) == b"x%d" % i
        for server in (first, second):
            server.close()
            await server.wait_closed()
            assert not server.is_serving()

    run(loop, main())


def test_create_server_on_all_interfaces_binds_every_family(loop):
    async def main():
        server = await loop.create_server(EchoServerProtocol, "localhost", 0)
        families = {sock.family for sock in server.sockets}
        assert socket.AF_INET in families
        port = next(s.getsockname()[1] for s in server.sockets if s.family == socket.AF_INET)
        assert await echo_once(loop, ("127.0.0.1", port), b"v4") == b"v4"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_server_with_an_existing_socket_and_backlog(loop):
    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(EchoServerProtocol, sock=sock, backlog=10)
        assert server.sockets[0].getsockname() == sock.getsockname()
        assert await echo_once(loop, sock.getsockname(), b"existing") == b"existing"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_server_on_a_busy_port_raises(loop):
    async def main():
        server, (host, port) = await start_echo_server(loop)
        with pytest.raises(OSError):
            await loop.create_server(EchoServerProtocol, host, port)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_start_serving_false_then_start_serving(loop):
    async def main():
        server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0, start_serving=False)
        address = server.sockets[0].getsockname()
        assert not server.is_serving()
        await asyncio.sleep(0.01)
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        assert await echo_once(loop, address, b"now serving") == b"now serving"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_serve_forever_until_cancelled(loop):
    async def main():
        server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0, start_serving=False)
        address = server.sockets[0].getsockname()
        serving = asyncio.ensure_future(server.serve_forever())
        while not server.is_serving():
            await asyncio.sleep(0)
        assert await echo_once(loop, address, b"forever") == b"forever"
        assert server.is_serving()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *address)

    run(loop, main())


def test_server_async_context_manager_closes_it(loop):
    async def main():
        async with await loop.create_server(EchoServerProtocol, "127.0.0.1", 0) as server:
            address = server.sockets[0].getsockname()
            assert await echo_once(loop, address, b"ctx") == b"ctx"
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *address)

    run(loop, main())


def test_server_close_keeps_existing_connections(loop):
    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), *address)
        server.close()
        transport.write(b"after close")
        transport.write_eof()
        assert await protocol.done == b"after close"
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Server.close_clients/abort_clients are new in Python 3.13")
def test_server_close_clients_and_abort_clients(loop):
    async def main():
        server, address = await start_echo_server(loop)
        clients = [
            await loop.create_connection(lambda: CollectingClientProtocol(loop), *address) for _ in range(3)
        ]
        await asyncio.sleep(0.01)
        server.close()
        server.close_clients()
        for transport, protocol in clients[:2]:
            assert await protocol.done == b""
        server.abort_clients()
        await asyncio.gather(clients[2][1].done, return_exceptions=True)
        await server.wait_closed()

    run(loop, main())


def test_connect_accepted_socket(loop):
    async def main():
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
        transport, _ = await loop.connect_accepted_socket(EchoServerProtocol, accepted)
        client_transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), sock=client)
        payload = random_payload(200_000, 3)
        client_transport.write(payload)
        client_transport.write_eof()
        assert await protocol.done == payload
        transport.close()

    run(loop, main())


def test_flow_control_pauses_and_resumes_the_writer(loop):
    async def main():
        server_side = loop.create_future()

        class SlowReader(asyncio.Protocol):
            def __init__(self):
                self.received = bytearray()
                self.done = loop.create_future()

            def connection_made(self, transport):
                self.transport = transport
                transport.pause_reading()
                server_side.set_result(self)

            def data_received(self, data):
                self.received += data

            def eof_received(self):
                self.done.set_result(bytes(self.received))

        class Writer(asyncio.Protocol):
            def __init__(self):
                self.events = []
                self.resumed = loop.create_future()

            def pause_writing(self):
                self.events.append("pause")

            def resume_writing(self):
                self.events.append("resume")
                if not self.resumed.done():
                    self.resumed.set_result(None)

        server = await loop.create_server(SlowReader, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        transport, writer = await loop.create_connection(Writer, *address)
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        reader = await server_side
        payload = random_payload(8 * 1024 * 1024, 11)
        chunk = 256 * 1024
        for offset in range(0, len(payload), chunk):
            transport.write(payload[offset:offset + chunk])
        # The kernel buffers hold far less than 8 MiB, so the transport buffers the rest.
        assert writer.events == ["pause"]
        assert transport.get_write_buffer_size() > 64 * 1024
        reader.transport.resume_reading()
        await writer.resumed
        transport.write_eof()
        assert await reader.done == payload
        assert writer.events == ["pause", "resume"]
        assert transport.get_write_buffer_size() == 0
        transport.close()
        reader.transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_pause_reading_stops_data_received_until_resumed(loop):
    async def main():
        class Pausing(CollectingClientProtocol):
            def __init__(self):
                super().__init__(loop)
                self.first = loop.create_future()

            def data_received(self, data):
                super().data_received(data)
                if not self.first.done():
                    self.transport.pause_reading()
                    self.first.set_result(len(self.received))

        accepted = loop.create_future()

        class Sender(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        server = await loop.create_server(Sender, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        transport, protocol = await loop.create_connection(Pausing, *address)
        sender = await accepted
        sender.write(b"first")
        size_at_pause = await protocol.first
        assert not transport.is_reading()
        sender.write(b"second batch while paused")
        await asyncio.sleep(0.1)
        assert len(protocol.received) == size_at_pause
        transport.pause_reading()  # pausing twice is harmless (3.7+)
        transport.resume_reading()
        assert transport.is_reading()
        sender.write(b"-third")
        sender.write_eof()
        assert await protocol.done == b"firstsecond batch while paused-third"
        server.close()
        await server.wait_closed()

    run(loop, main())


class _Accumulating(asyncio.Protocol):
    def __init__(self):
        self.data = b""

    def data_received(self, data):
        self.data += data


class _AccumulatingBuffered(asyncio.BufferedProtocol):
    def __init__(self):
        self.data = b""
        self._buf = bytearray(64)

    def get_buffer(self, sizehint):
        return self._buf

    def buffer_updated(self, nbytes):
        self.data += bytes(self._buf[:nbytes])


@pytest.mark.parametrize("protocol_type", [_Accumulating, _AccumulatingBuffered])
def test_pause_reading_right_after_a_poll_that_brought_bytes_loses_none(loop, protocol_type):
    # A callback that was ready before the loop polled runs after the poll and before the
    # poll's I/O is handled: bytes that poll brought must not be lost when it pauses reading
    # (asyncio: they stay in the socket), and must come after a resume, in order. anyio's socket
    # streams pause and resume this way around every read.
    async def main():
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            transport, protocol = await loop.create_connection(
                protocol_type, *listener.getsockname()
            )
            conn, _ = listener.accept()
            with conn:
                await asyncio.sleep(0.02)  # reading, nothing there yet
                conn.sendall(b"hello")
                loop.call_soon(transport.pause_reading)
                await asyncio.sleep(0.05)
                assert protocol.data == b"", "nothing is delivered while paused"
                transport.resume_reading()
                await asyncio.sleep(0.05)
                assert protocol.data == b"hello"
                # Paused and resumed by two callbacks between a poll and its dispatch.
                for i in range(20):
                    conn.sendall(b"<%d>" % i)
                    loop.call_soon(transport.pause_reading)
                    loop.call_soon(transport.resume_reading)
                    await asyncio.sleep(0.002)
                conn.sendall(b"end")
                expected = b"hello" + b"".join(b"<%d>" % i for i in range(20)) + b"end"
                for _ in range(200):
                    if len(protocol.data) >= len(expected):
                        break
                    await asyncio.sleep(0.005)
                assert protocol.data == expected
            transport.close()

    run(loop, main())


def test_no_fd_leak_after_many_servers_and_connections(loop_factory):
    from support import open_fds

    before = open_fds()
    loop = loop_factory()
    try:
        async def main():
            for round_number in range(100):
                server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0)
                address = server.sockets[0].getsockname()
                assert await echo_once(loop, address, b"r%d" % round_number) == b"r%d" % round_number
                reader, writer = await asyncio.open_connection(*address)
                writer.write(b"stream")
                writer.write_eof()
                assert await reader.read() == b"stream"
                writer.close()
                await writer.wait_closed()
                server.close()
                await server.wait_closed()
            await asyncio.sleep(0.01)

        run(loop, main())
    finally:
        loop.close()
    assert open_fds() == before


def test_unreferenced_open_transport_emits_a_resource_warning_and_closes_its_socket(loop):
    import gc
    import warnings

    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(asyncio.Protocol, *address)
        # While reading, the loop itself references the transport; paused, nothing does.
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        fd = sock.fileno()
        inode = os.fstat(fd).st_ino
        await asyncio.sleep(0.01)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del transport, protocol, sock
            gc.collect()
        server.close()
        await server.wait_closed()
        return fd, inode, caught

    fd, inode, caught = run(loop, main())
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any("unclosed transport" in m for m in messages), messages
    try:
        still_open = os.fstat(fd).st_ino == inode
    except OSError:
        still_open = False
    assert not still_open, "the socket of the collected transport was leaked"


def test_toggling_pause_and_resume_reading_during_a_transfer_loses_nothing(loop):
    async def main():
        class Toggling(CollectingClientProtocol):
            """Pauses after every chunk and resumes on a later iteration."""

            def data_received(self, data):
                super().data_received(data)
                self.transport.pause_reading()
                loop.call_soon(self.resume)

            def resume(self):
                if not self.transport.is_closing():
                    self.transport.resume_reading()

        server, address = await start_echo_server(loop)
        payload = random_payload(4 * 1024 * 1024, 21)
        transport, protocol = await loop.create_connection(lambda: Toggling(loop), *address)
        transport.write(payload)
        transport.write_eof()
        assert await protocol.done == payload
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_many_simultaneous_connections_are_byte_exact(loop):
    # 128 receiving sockets (both ends run on this loop) for ringloop's 64 receive buffers: polls
    # that find the buffer ring empty must leave the bytes in the sockets, not lose them.
    async def main():
        server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0, backlog=256)
        address = server.sockets[0].getsockname()
        payloads = [random_payload(256 * 1024 + i, 100 + i) for i in range(64)]
        echoed = await asyncio.gather(*(echo_once(loop, address, p) for p in payloads))
        mismatched = [i for i, (p, e) in enumerate(zip(payloads, echoed)) if p != e]
        assert not mismatched
        server.close()
        await server.wait_closed()

    run(loop, main())



class LifecycleRecorder(asyncio.Protocol):
    """Records every protocol callback in order."""

    def __init__(self, loop):
        self.calls = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.calls.append("made")
        self.transport = transport

    def data_received(self, data):
        self.calls.append("data")

    def eof_received(self):
        self.calls.append("eof")

    def connection_lost(self, exc):
        self.calls.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


def test_protocol_callbacks_come_in_order_and_connection_lost_once(loop):
    async def main():
        accepted = loop.create_future()

        class Server(LifecycleRecorder):
            def connection_made(self, transport):
                super().connection_made(transport)
                accepted.set_result(self)

        server = await loop.create_server(lambda: Server(loop), "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        transport, client = await loop.create_connection(lambda: LifecycleRecorder(loop), *address)
        server_protocol = await accepted
        transport.write(b"hello")
        transport.write_eof()
        await server_protocol.lost  # eof_received returned None: the server side closed itself
        await client.lost
        await asyncio.sleep(0.01)
        assert server_protocol.calls[0] == "made" and server_protocol.calls[-2:] == ["eof", "lost"]
        assert set(server_protocol.calls[1:-2]) == {"data"}
        assert client.calls[0] == "made" and client.calls[-1] == "lost"
        assert client.calls.count("lost") == 1 and server_protocol.calls.count("lost") == 1
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_writes_after_close_are_ignored_and_write_after_eof_raises(loop):
    async def main():
        server, address = await start_echo_server(loop)
        transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), *address)
        transport.write(b"before eof")
        transport.write_eof()
        with pytest.raises(RuntimeError):
            transport.write(b"after eof")
        assert await protocol.done == b"before eof"

        transport, protocol = await loop.create_connection(lambda: CollectingClientProtocol(loop), *address)
        with pytest.raises(TypeError):
            transport.write("text is not bytes")
        transport.close()
        transport.write(b"after close")  # ignored (logged after a few attempts), no exception
        transport.close()  # closing twice is harmless
        assert await protocol.done == b""
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_close_flushes_buffered_data_and_abort_with_pending_writes_is_safe(loop):
    async def main():
        server, address = await start_echo_server(loop)
        # close(): everything written before it still arrives.
        payload = random_payload(3 * 1024 * 1024, 31)
        sink_done = loop.create_future()

        class Sink(asyncio.Protocol):
            def __init__(self):
                self.received = bytearray()

            def data_received(self, data):
                self.received += data

            def connection_lost(self, exc):
                sink_done.set_result(bytes(self.received))

        sink_server = await loop.create_server(Sink, "127.0.0.1", 0)
        transport, _ = await loop.create_connection(asyncio.Protocol, *sink_server.sockets[0].getsockname())
        transport.write(payload)
        transport.close()
        assert await sink_done == payload

        # abort() with megabytes still queued: connection_lost once, nothing else.
        transport, protocol = await loop.create_connection(lambda: LifecycleRecorder(loop), *address)
        for _ in range(16):
            transport.write(payload)
        transport.abort()
        await protocol.lost
        await asyncio.sleep(0.02)
        assert protocol.calls.count("lost") == 1
        assert transport.get_write_buffer_size() == 0 or transport.is_closing()
        sink_server.close()
        server.close()
        await asyncio.gather(sink_server.wait_closed(), server.wait_closed())

    run(loop, main())


def test_closing_the_loop_with_open_transports_does_not_crash(loop_factory):
    loop = loop_factory()
    try:
        async def main():
            server, address = await start_echo_server(loop)
            transport, _ = await loop.create_connection(asyncio.Protocol, *address)
            transport.write(random_payload(1024 * 1024, 41))
            return server, transport

        server, transport = run(loop, main())
        server.close()
        transport.abort()
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    assert loop.is_closed()
