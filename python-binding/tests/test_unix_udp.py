"""Unix-domain stream sockets and UDP datagram endpoints."""

import asyncio
import os
import socket

import pytest

from support import has_ipv6_loopback, run
from test_tcp import CollectingClientProtocol, EchoServerProtocol, random_payload


def test_unix_server_and_connection_echo_is_byte_exact(loop, tmp_path):
    path = str(tmp_path / "echo.sock")

    async def main():
        server = await loop.create_unix_server(EchoServerProtocol, path)
        assert server.sockets[0].family == socket.AF_UNIX
        assert server.sockets[0].getsockname() == path

        async def one(size, seed):
            payload = random_payload(size, seed)
            transport, protocol = await loop.create_unix_connection(lambda: CollectingClientProtocol(loop), path)
            assert transport.get_extra_info("peername") == path
            transport.write(payload)
            transport.write_eof()
            return await protocol.done == payload

        assert await asyncio.gather(*(one(s, i) for i, s in enumerate([1, 5000, 1024 * 1024]))) == [True] * 3
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_streams(loop, tmp_path):
    path = str(tmp_path / "streams.sock")

    async def handler(reader, writer):
        data = await reader.read()
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handler, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"abcdef")
        writer.write_eof()
        assert await reader.read() == b"fedcba"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_server_replaces_a_stale_socket_file(loop, tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file remains, nobody listens

    async def main():
        server = await loop.create_unix_server(EchoServerProtocol, path)
        transport, protocol = await loop.create_unix_connection(lambda: CollectingClientProtocol(loop), path)
        transport.write(b"fresh")
        transport.write_eof()
        assert await protocol.done == b"fresh"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_connection_to_a_missing_path_raises(loop, tmp_path):
    async def main():
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await loop.create_unix_connection(asyncio.Protocol, str(tmp_path / "missing.sock"))

    run(loop, main())


def test_unix_server_from_an_existing_socket(loop, tmp_path):
    path = str(tmp_path / "existing.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)

    async def main():
        server = await loop.create_unix_server(EchoServerProtocol, sock=sock)
        transport, protocol = await loop.create_unix_connection(lambda: CollectingClientProtocol(loop), path)
        transport.write(b"sock=")
        transport.write_eof()
        assert await protocol.done == b"sock="
        server.close()
        await server.wait_closed()

    run(loop, main())


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class DatagramCollector(asyncio.DatagramProtocol):
    def __init__(self, loop, expected):
        self.received = []
        self.errors = []
        self.expected = expected
        self.done = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.received.append((data, addr))
        if len(self.received) == self.expected and not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc):
        self.errors.append(exc)
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_datagram_endpoint_echo_keeps_datagram_boundaries(loop):
    async def main():
        server_transport, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", 0))
        server_address = server_transport.get_extra_info("sockname")
        datagrams = [os.urandom(n) for n in (1, 100, 1400, 9000, 60000)]
        transport, collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, len(datagrams)), remote_addr=server_address
        )
        assert transport.get_extra_info("peername") == server_address
        for datagram in datagrams:
            transport.sendto(datagram)
        await collector.done
        assert not collector.errors
        assert sorted(d for d, _ in collector.received) == sorted(datagrams)
        assert {type(d) for d, _ in collector.received} == {bytes}  # their own bytes, as asyncio gives
        assert all(addr == server_address for _, addr in collector.received)
        transport.close()
        assert await collector.lost is None
        server_transport.close()

    run(loop, main())


def test_unconnected_datagram_endpoint_sends_to_any_address(loop):
    async def main():
        echo_transport, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", 0))
        echo_address = echo_transport.get_extra_info("sockname")
        transport, collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, 3), local_addr=("127.0.0.1", 0)
        )
        for i in range(3):
            transport.sendto(b"datagram %d" % i, echo_address)
        await collector.done
        assert sorted(d for d, _ in collector.received) == [b"datagram 0", b"datagram 1", b"datagram 2"]
        transport.close()
        echo_transport.close()

    run(loop, main())


def test_connected_datagram_endpoint_reports_refused_port(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed_address = probe.getsockname()
        transport, collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, 1), remote_addr=closed_address
        )
        for _ in range(3):
            transport.sendto(b"anyone?")
            await asyncio.sleep(0.02)
            if collector.errors:
                break
        await asyncio.wait_for(collector.done, 5)
        assert collector.errors and isinstance(collector.errors[0], ConnectionRefusedError)
        transport.close()

    run(loop, main())


def test_datagram_endpoint_on_an_existing_socket_and_unix_datagrams(loop, tmp_path):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        echo_transport, _ = await loop.create_datagram_endpoint(DatagramEcho, sock=sock)
        transport, collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, 1), remote_addr=sock.getsockname()
        )
        transport.sendto(b"over sock=")
        await collector.done
        assert collector.received[0][0] == b"over sock="
        transport.close()
        echo_transport.close()

        server_path, client_path = str(tmp_path / "dgram-server"), str(tmp_path / "dgram-client")
        unix_echo, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=server_path, family=socket.AF_UNIX)
        unix_client, unix_collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, 1), local_addr=client_path, remote_addr=server_path, family=socket.AF_UNIX
        )
        unix_client.sendto(b"unix datagram")
        await unix_collector.done
        assert unix_collector.received[0] == (b"unix datagram", server_path)
        unix_client.close()
        unix_echo.close()

    run(loop, main())


def test_datagram_senders_are_told_apart_over_ipv4_and_ipv6(loop):
    families = [("127.0.0.1", socket.AF_INET)]
    if has_ipv6_loopback():
        families.append(("::1", socket.AF_INET6))

    async def main():
        for host, family in families:
            transport, collector = await loop.create_datagram_endpoint(
                lambda: DatagramCollector(loop, 20), local_addr=(host, 0)
            )
            address = transport.get_extra_info("sockname")
            senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(10)]
            try:
                for sender in senders:
                    sender.bind((host, 0))
                for round_ in range(2):
                    for i, sender in enumerate(senders):
                        sender.sendto(b"%d/%d" % (round_, i), address)
                await collector.done
                expected = {(b"%d/%d" % (r, i), s.getsockname()) for r in range(2) for i, s in enumerate(senders)}
                assert set(collector.received) == expected
            finally:
                for sender in senders:
                    sender.close()
            transport.close()

    run(loop, main())


def test_datagram_transport_paused_receives_nothing_until_resumed(loop):
    async def main():
        transport, collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, 5), local_addr=("127.0.0.1", 0)
        )
        address = transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"before", address)
            while not collector.received:
                await asyncio.sleep(0.001)
            transport.pause_reading()
            assert not transport.is_reading()
            for i in range(4):
                sender.sendto(b"paused %d" % i, address)
            await asyncio.sleep(0.05)
            assert [d for d, _ in collector.received] == [b"before"]
            transport.resume_reading()
            await collector.done
        assert [d for d, _ in collector.received] == [b"before"] + [b"paused %d" % i for i in range(4)]
        transport.close()

    run(loop, main())


def test_datagram_transport_paused_right_after_a_poll_that_brought_datagrams_loses_none(loop):
    # A callback ready before the poll pauses reading after the poll brought a datagram, before
    # it is handled: it must wait for the resume, not vanish.
    async def main():
        transport, collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, 2), local_addr=("127.0.0.1", 0)
        )
        address = transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            await asyncio.sleep(0.02)
            sender.sendto(b"hello", address)
            loop.call_soon(transport.pause_reading)
            await asyncio.sleep(0.05)
            assert collector.received == []
            transport.resume_reading()
            sender.sendto(b"again", address)
            await collector.done
        assert [d for d, _ in collector.received] == [b"hello", b"again"]
        transport.close()

    run(loop, main())


def test_datagram_received_error_is_reported_and_receiving_goes_on(loop):
    reported = []
    loop.set_exception_handler(lambda _, context: reported.append(context))

    class FailsOnce(DatagramCollector):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if len(self.received) == 1:
                raise ZeroDivisionError("from datagram_received")

    async def main():
        transport, collector = await loop.create_datagram_endpoint(
            lambda: FailsOnce(loop, 2), local_addr=("127.0.0.1", 0)
        )
        address = transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"one", address)
            while not collector.received:
                await asyncio.sleep(0.001)
            sender.sendto(b"two", address)
            await collector.done
        assert [d for d, _ in collector.received] == [b"one", b"two"]
        assert [type(c["exception"]) for c in reported] == [ZeroDivisionError]
        assert reported[0]["message"].startswith("Exception in callback ")
        transport.close()

    run(loop, main())


def test_datagram_transport_write_buffer_size_counts_only_unsent_bytes(loop):
    async def main():
        transport, collector = await loop.create_datagram_endpoint(
            lambda: DatagramCollector(loop, 1), local_addr=("127.0.0.1", 0)
        )
        assert transport.get_write_buffer_size() == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"in", transport.get_extra_info("sockname"))
            await collector.done
            # Receiving buffers nothing to write; a datagram sent at once neither.
            assert transport.get_write_buffer_size() == 0
            transport.sendto(b"out", sender.getsockname())
            assert transport.get_write_buffer_size() == 0
            assert sender.recv(16) == b"out"
        transport.close()

    run(loop, main())
