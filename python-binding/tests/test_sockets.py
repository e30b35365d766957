"""Low-level socket coroutines (loop.sock_*) and add_reader/add_writer semantics."""

import asyncio
import os
import random
import socket
import sys

import pytest

from support import run


def nonblocking(sock):
    sock.setblocking(False)
    return sock


async def connected_pair(loop):
    """(client, server-side) non-blocking TCP sockets connected through the loop."""
    listener = nonblocking(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = nonblocking(socket.socket())
    try:
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        server_side, peer = await accept
        assert peer == client.getsockname()
        assert not server_side.getblocking()  # sock_accept returns a non-blocking socket
    finally:
        listener.close()
    return client, server_side


def test_sock_connect_accept_sendall_recv_are_byte_exact(loop):
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            payload = os.urandom(4 * 1024 * 1024)

            async def receive_all():
                received = bytearray()
                while len(received) < len(payload):
                    chunk = await loop.sock_recv(server_side, 65536)
                    assert chunk
                    received += chunk
                return bytes(received)

            receiver = asyncio.ensure_future(receive_all())
            assert await loop.sock_sendall(client, payload) is None
            assert await receiver == payload
            client.shutdown(socket.SHUT_WR)
            assert await loop.sock_recv(server_side, 10) == b""

    run(loop, main())


def test_sock_recv_on_a_socket_a_transport_owns_is_refused_until_the_transport_lets_go(loop):
    # asyncio refuses a sock_* call that would wait on an fd a live transport reads from. Once
    # the transport is closed (and so its socket), a new socket that gets the same fd number is
    # free to use, even while the closed transport object is still around.
    async def main():
        client, server_side = await connected_pair(loop)
        with server_side:
            # A receive that fills its request first: ringloop's next one on this socket tries
            # recv() at once, and must still see the transport.
            server_side.sendall(b"0123456789")
            assert await loop.sock_recv(client, 10) == b"0123456789"
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=client)
            for call in (lambda: loop.sock_recv(client, 10), lambda: loop.sock_recv_into(client, bytearray(10))):
                with pytest.raises(RuntimeError, match="is used by transport"):
                    await call()
            fd = client.fileno()
            first, peer = socket.socketpair()
            transport.close()
            await asyncio.sleep(0.01)
            assert client.fileno() == -1
            with first:
                os.dup2(first.fileno(), fd, inheritable=False)
            reused = socket.socket(fileno=fd)
            with reused, peer:
                reused.setblocking(False)
                peer.sendall(b"free")
                assert await loop.sock_recv(reused, 10) == b"free"
            assert transport.is_closing()

    run(loop, main())


def test_sock_recv_refuses_an_ssl_socket(loop, client_ssl_context):
    async def main():
        raw = socket.socket()
        wrapped = client_ssl_context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        with wrapped:
            wrapped.setblocking(False)
            for call in (lambda: loop.sock_recv(wrapped, 10), lambda: loop.sock_recv_into(wrapped, bytearray(10))):
                with pytest.raises(TypeError, match="SSLSocket"):
                    await call()

    run(loop, main())


def test_sock_recv_into_fills_the_buffer(loop):
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            await loop.sock_sendall(client, b"0123456789")
            buffer = bytearray(4)
            received = bytearray()
            while len(received) < 10:
                n = await loop.sock_recv_into(server_side, buffer)
                assert 0 < n <= 4
                received += buffer[:n]
            assert received == b"0123456789"
            view = memoryview(bytearray(16))
            await loop.sock_sendall(client, b"view")
            n = await loop.sock_recv_into(server_side, view[8:])
            assert bytes(view[8:8 + n]) == b"view"[:n]

    run(loop, main())


def test_sock_recv_waits_for_data(loop):
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            pending = asyncio.ensure_future(loop.sock_recv(server_side, 100))
            await asyncio.sleep(0.05)
            assert not pending.done()
            await loop.sock_sendall(client, b"late")
            assert await pending == b"late"

    run(loop, main())


def test_cancelled_sock_recv_does_not_consume_data(loop):
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            pending = asyncio.ensure_future(loop.sock_recv(server_side, 100))
            await asyncio.sleep(0.01)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            await loop.sock_sendall(client, b"kept")
            assert await loop.sock_recv(server_side, 100) == b"kept"

    run(loop, main())


@pytest.mark.parametrize("receives", ["sock_recv", "with-5-byte-recv_into"])
def test_sock_recv_cancelled_as_data_arrives_loses_nothing(loop, receives):
    # Cancel receives at every point of their life (before the bytes come, in the iteration they
    # come, after): whatever the loop took from the socket must reach a later receive, in order.
    # "with-5-byte-recv_into": every other receive, and the final drain, is a sock_recv_into() of
    # 5 bytes, so bytes a cancelled 1000-byte receive had taken reach it in pieces.
    small_too = receives != "sock_recv"

    async def main():
        client, server_side = await connected_pair(loop)
        small = bytearray(5)

        async def receive_small():
            return bytes(small[: await loop.sock_recv_into(server_side, small)])

        with client, server_side:
            sent = bytearray()
            received = bytearray()
            for i in range(300):
                chunk = os.urandom(1 + (i * 37) % 3000)
                if small_too and i % 2:
                    pending = asyncio.ensure_future(receive_small())
                else:
                    pending = asyncio.ensure_future(loop.sock_recv(server_side, 1000))
                await asyncio.sleep(0)
                await loop.sock_sendall(client, chunk)
                sent += chunk
                for _ in range(i % 3):
                    await asyncio.sleep(0)
                pending.cancel()
                try:
                    received += await pending
                except asyncio.CancelledError:
                    pass
            client.shutdown(socket.SHUT_WR)
            while True:
                data = await (receive_small() if small_too else loop.sock_recv(server_side, 4096))
                if not data:
                    break
                received += data
            assert len(received) == len(sent)
            assert received == sent

    run(loop, main())


def test_bytes_that_arrive_as_a_receive_is_cancelled_come_before_newer_ones(loop):
    # The bytes arrive in the iteration that tells the waiting receive it was cancelled, before
    # it is told: ringloop's op may already have taken them. Small receives afterwards, some
    # of which fill their request, must still see them first.
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            pending = asyncio.ensure_future(loop.sock_recv(server_side, 1000))
            await asyncio.sleep(0.01)  # the receive is waiting for bytes
            loop.call_soon(client.send, b"A" * 100)
            pending.cancel()
            try:
                received = bytearray(await pending)
            except asyncio.CancelledError:
                received = bytearray()
            client.send(b"B" * 100)
            client.shutdown(socket.SHUT_WR)
            while True:
                chunk = await loop.sock_recv(server_side, 10)
                if not chunk:
                    break
                received += chunk
            assert received == b"A" * 100 + b"B" * 100

    run(loop, main())


@pytest.mark.parametrize("second", ["sock_recv", "sock_recv_into"])
def test_a_receive_started_after_a_cancelled_one_gets_the_bytes_that_one_took(loop, second):
    # (uvloop's test_sock_send_before_cancel.) The bytes are sent while a receive waits, and it
    # is cancelled before the loop has seen them; the next receive starts at once, and nothing
    # more is sent: whatever the cancelled receive's op took must reach it.
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            waiting = asyncio.ensure_future(loop.sock_recv(server_side, 1))
            done, _ = await asyncio.wait([waiting], timeout=0.05)
            assert not done
            await loop.sock_sendall(client, b"1")
            waiting.cancel()
            if second == "sock_recv":
                data = await asyncio.wait_for(loop.sock_recv(server_side, 1), 5)
            else:
                buf = bytearray(1)
                count = await asyncio.wait_for(loop.sock_recv_into(server_side, buf), 5)
                data = bytes(buf[:count])
            try:
                data = (await waiting) + data  # it may have got the byte before the cancel
            except asyncio.CancelledError:
                pass
            client.send(b"2")
            client.shutdown(socket.SHUT_WR)
            while True:
                chunk = await loop.sock_recv(server_side, 10)
                if not chunk:
                    break
                data += chunk
            assert data == b"12"

    run(loop, main())


def test_sock_recv_returns_at_once_when_the_bytes_are_waiting(loop):
    # asyncio's sock_recv tries recv() before waiting. ringloop receives through an op, except
    # after a receive that filled its whole request: then the next one also takes the waiting
    # bytes at once, without a turn of the loop (the callback below must not run meanwhile).
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            payload = random.Random(3).randbytes(20_000)
            await loop.sock_sendall(client, payload)
            await asyncio.sleep(0.01)
            received = bytearray(await loop.sock_recv(server_side, 10))
            assert len(received) == 10
            ran = []
            loop.call_soon(ran.append, True)
            received += await loop.sock_recv(server_side, 10)
            small = bytearray(7)
            received += small[: await loop.sock_recv_into(server_side, small)]
            assert not ran
            while len(received) < len(payload):
                received += await loop.sock_recv(server_side, 333)
            assert received == payload
            # Drained: the next receive waits for bytes sent after it started.
            pending = asyncio.ensure_future(loop.sock_recv(server_side, 10))
            await asyncio.sleep(0.01)
            assert not pending.done()
            await loop.sock_sendall(client, b"late")
            assert await pending == b"late"

    run(loop, main())


def test_sock_recv_into_cancelled_keeps_the_bytes_for_the_next_receive(loop):
    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            buffer = bytearray(8)
            payload = b"abcdefghijklmnopqrstuvwxyz"
            pending = asyncio.ensure_future(loop.sock_recv_into(server_side, buffer))
            await asyncio.sleep(0)
            await loop.sock_sendall(client, payload)
            await asyncio.sleep(0.01)
            pending.cancel()
            got = bytearray()
            try:
                got += buffer[: await pending]
            except asyncio.CancelledError:
                pass
            client.shutdown(socket.SHUT_WR)
            while True:
                n = await loop.sock_recv_into(server_side, buffer)
                if not n:
                    break
                got += buffer[:n]
            assert got == payload

    run(loop, main())


def test_sock_connect_refused(loop):
    async def main():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = probe.getsockname()
        with nonblocking(socket.socket()) as sock:
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(sock, address)

    run(loop, main())


def test_sock_connect_resolves_a_host_name(loop):
    async def main():
        with nonblocking(socket.socket()) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            with nonblocking(socket.socket()) as client:
                await loop.sock_connect(client, ("localhost", listener.getsockname()[1]))
                conn, _ = await loop.sock_accept(listener)
                conn.close()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sock_recvfrom/sock_sendto are new in 3.11")
def test_sock_sendto_recvfrom_and_recvfrom_into(loop):
    async def main():
        with nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as a, \
             nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as b:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            pending = asyncio.ensure_future(loop.sock_recvfrom(b, 65536))
            await asyncio.sleep(0.01)
            datagram = os.urandom(60000)
            assert await loop.sock_sendto(a, datagram, b.getsockname()) == len(datagram)
            data, source = await pending
            assert data == datagram and source == a.getsockname()
            await loop.sock_sendto(b, b"reply", a.getsockname())
            buffer = bytearray(100)
            n, source = await loop.sock_recvfrom_into(a, buffer)
            assert buffer[:n] == b"reply" and source == b.getsockname()

    run(loop, main())


def test_sock_methods_reject_ssl_sockets(loop, client_ssl_context):
    async def main():
        raw = nonblocking(socket.socket())
        wrapped = client_ssl_context.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="localhost")
        with wrapped:
            with pytest.raises(TypeError):
                await loop.sock_recv(wrapped, 1)

    run(loop, main())


def test_add_reader_is_level_triggered_and_remove_reader_reports_presence(loop):
    reader_sock, writer_sock = socket.socketpair()
    with reader_sock, writer_sock:
        calls = []

        def on_readable(tag):
            calls.append(tag)
            if len(calls) == 3:
                loop.remove_reader(reader_sock.fileno())
                loop.call_later(0.05, loop.stop)

        loop.add_reader(reader_sock.fileno(), on_readable, "tag")
        writer_sock.send(b"x")  # never read: readiness persists
        loop.run_forever()
        assert calls == ["tag", "tag", "tag"]
        assert loop.remove_reader(reader_sock.fileno()) is False
        assert reader_sock.recv(1) == b"x"


def test_add_reader_replaces_the_previous_callback(loop):
    reader_sock, writer_sock = socket.socketpair()
    with reader_sock, writer_sock:
        seen = []

        def second():
            seen.append("second")
            reader_sock.recv(10)
            loop.stop()

        loop.add_reader(reader_sock, lambda: seen.append("first"))  # file-like objects are accepted
        loop.add_reader(reader_sock.fileno(), second)
        writer_sock.send(b"x")
        loop.run_forever()
        assert seen == ["second"]
        assert loop.remove_reader(reader_sock) is True


def test_remove_reader_takes_effect_within_the_same_iteration(loop):
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        calls = []
        (r1, w1), (r2, w2) = pairs

        def on_first():
            calls.append("first")
            r1.recv(10)
            loop.remove_reader(r2.fileno())
            loop.remove_reader(r1.fileno())

        def on_second():
            calls.append("second")
            r2.recv(10)
            loop.remove_reader(r1.fileno())
            loop.remove_reader(r2.fileno())

        loop.add_reader(r1.fileno(), on_first)
        loop.add_reader(r2.fileno(), on_second)
        w1.send(b"1")
        w2.send(b"2")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        # Both were ready in the same iteration; whichever ran first removed the other.
        assert calls in (["first"], ["second"])
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_add_reader_leaves_the_blocking_mode_alone(loop):
    reader_sock, writer_sock = socket.socketpair()
    with reader_sock, writer_sock:
        assert reader_sock.getblocking()
        loop.add_reader(reader_sock.fileno(), lambda: None)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert os.get_blocking(reader_sock.fileno())
        loop.remove_reader(reader_sock.fileno())
        assert os.get_blocking(reader_sock.fileno())
        nonblocking(reader_sock)
        loop.add_writer(reader_sock.fileno(), lambda: None)
        loop.remove_writer(reader_sock.fileno())
        assert not os.get_blocking(reader_sock.fileno())


def test_add_writer_fires_while_writable(loop):
    a, b = socket.socketpair()
    with a, b:
        calls = []

        def on_writable():
            calls.append(1)
            if len(calls) == 2:
                assert loop.remove_writer(a.fileno()) is True
                loop.stop()

        loop.add_writer(a.fileno(), on_writable)
        loop.run_forever()
        assert calls == [1, 1]
        assert loop.remove_writer(a.fileno()) is False


def test_reader_and_writer_on_the_same_fd_are_independent(loop):
    a, b = socket.socketpair()
    with a, b:
        seen = set()

        def done_if_both():
            if seen == {"reader", "writer"}:
                loop.stop()

        def on_writable():
            seen.add("writer")
            loop.remove_writer(a.fileno())
            done_if_both()

        def on_readable():
            seen.add("reader")
            a.recv(10)
            loop.remove_reader(a.fileno())
            done_if_both()

        loop.add_reader(a.fileno(), on_readable)
        loop.add_writer(a.fileno(), on_writable)
        b.send(b"ping")
        loop.run_forever()
        assert seen == {"reader", "writer"}


def test_reader_sees_peer_hangup(loop):
    a, b = socket.socketpair()
    with a:
        seen = []

        def on_readable():
            seen.append(a.recv(10))
            loop.remove_reader(a.fileno())
            loop.stop()

        loop.add_reader(a.fileno(), on_readable)
        b.close()
        loop.run_forever()
        assert seen == [b""]


def test_add_reader_with_invalid_fd_raises(loop):
    with pytest.raises((ValueError, OSError)):
        loop.add_reader(-1, lambda: None)
    with pytest.raises((ValueError, TypeError)):
        loop.add_reader("not an fd", lambda: None)


def test_add_reader_on_a_pipe(loop):
    r, w = os.pipe()
    try:
        received = []

        def on_readable():
            received.append(os.read(r, 100))
            loop.remove_reader(r)
            loop.stop()

        loop.add_reader(r, on_readable)
        loop.call_later(0.01, os.write, w, b"through a pipe")
        loop.run_forever()
        assert received == [b"through a pipe"]
    finally:
        os.close(r)
        os.close(w)


class _TrackedSocket(socket.socket):
    """A socket subclass that records which of its I/O methods were called."""

    def __init__(self, *args, **kwargs):
        self.calls = set()
        super().__init__(*args, **kwargs)

    def recv(self, *args):
        self.calls.add("recv")
        return super().recv(*args)

    def recv_into(self, *args):
        self.calls.add("recv_into")
        return super().recv_into(*args)

    def recvfrom(self, *args):
        self.calls.add("recvfrom")
        return super().recvfrom(*args)

    def send(self, *args):
        self.calls.add("send")
        return super().send(*args)

    def sendto(self, *args):
        self.calls.add("sendto")
        return super().sendto(*args)


def test_a_socket_subclass_does_its_io_through_its_own_methods(loop):
    # asyncio's transports and sock_* methods call the socket object's methods, so a subclass
    # overriding them (instrumentation, fault injection; websockets' tests) sees its I/O.
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class Client(asyncio.Protocol):
        def __init__(self):
            self.got = loop.create_future()

        def data_received(self, data):
            self.got.set_result(data)

    class BufferedClient(asyncio.BufferedProtocol):
        def __init__(self):
            self.got = loop.create_future()
            self.buf = bytearray(64)

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.got.set_result(bytes(self.buf[:nbytes]))

    class Datagrams(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = loop.create_future()

        def datagram_received(self, data, addr):
            self.got.set_result(data)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        for protocol_type, read_method in ((Client, "recv"), (BufferedClient, "recv_into")):
            sock = _TrackedSocket(socket.AF_INET, socket.SOCK_STREAM)
            sock.connect(address)
            transport, protocol = await loop.create_connection(protocol_type, sock=sock)
            transport.write(b"hello")
            assert await protocol.got == b"hello"
            assert sock.calls == {read_method, "send"}, protocol_type
            transport.close()

        sock = nonblocking(_TrackedSocket(socket.AF_INET, socket.SOCK_STREAM))
        with sock:
            await loop.sock_connect(sock, address)
            await loop.sock_sendall(sock, b"ping")
            assert await loop.sock_recv(sock, 16) == b"ping"
            await loop.sock_sendall(sock, b"pong")
            buf = bytearray(16)
            assert await loop.sock_recv_into(sock, buf) == 4 and buf[:4] == b"pong"
            assert sock.calls == {"send", "recv", "recv_into"}
        server.close()
        await server.wait_closed()

        sock = _TrackedSocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, protocol = await loop.create_datagram_endpoint(Datagrams, sock=sock)
        transport.sendto(b"to myself", sock.getsockname())
        assert await protocol.got == b"to myself"
        assert sock.calls == {"sendto", "recvfrom"}
        transport.close()

    run(loop, main())
