"""TLS servers and clients (asyncio's SSL protocol over the loop's transports) and start_tls."""

import asyncio
import ssl

import pytest

from support import run
from test_tcp import random_payload


async def tls_echo_handler(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def test_tls_streams_echo_is_byte_exact(loop, server_ssl_context, client_ssl_context):
    async def main():
        server = await asyncio.start_server(tls_echo_handler, "127.0.0.1", 0, ssl=server_ssl_context)
        address = server.sockets[0].getsockname()

        async def one(size, seed):
            payload = random_payload(size, seed)
            reader, writer = await asyncio.open_connection(
                *address, ssl=client_ssl_context, server_hostname="localhost"
            )
            assert writer.get_extra_info("ssl_object").version().startswith("TLS")
            assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
            writer.write(payload)
            await writer.drain()
            received = await reader.readexactly(len(payload))
            writer.close()
            await writer.wait_closed()
            return received == payload

        results = await asyncio.gather(*(one(size, i) for i, size in enumerate([1, 16384, 1024 * 1024])))
        server.close()
        await server.wait_closed()
        return results

    assert run(loop, main()) == [True, True, True]


def test_tls_client_rejects_an_untrusted_certificate(loop, server_ssl_context):
    # In debug mode the server reports the aborted handshake to the exception handler.
    reported = []
    loop.set_exception_handler(lambda loop, context: reported.append(context))

    async def main():
        server = await asyncio.start_server(tls_echo_handler, "127.0.0.1", 0, ssl=server_ssl_context)
        address = server.sockets[0].getsockname()
        untrusting = ssl.create_default_context()  # system CAs only: the self-signed cert fails
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(*address, ssl=untrusting, server_hostname="localhost")
        server.close()
        await server.wait_closed()

    run(loop, main())
    for context in reported:
        assert isinstance(context.get("exception"), (ConnectionError, ssl.SSLError)), context


def test_tls_handshake_timeout(loop, client_ssl_context):
    async def main():
        # A plain TCP server that never speaks TLS.
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        with pytest.raises((ConnectionAbortedError, asyncio.TimeoutError, TimeoutError)):
            await loop.create_connection(
                asyncio.Protocol, *address, ssl=client_ssl_context, server_hostname="localhost",
                ssl_handshake_timeout=0.2,
            )
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_start_tls_upgrades_a_plain_connection(loop, server_ssl_context, client_ssl_context):
    class UpgradingServer(asyncio.Protocol):
        """Line protocol: "STARTTLS\\n" -> "OK\\n", then TLS; echoes everything after."""

        def __init__(self):
            self.buffer = b""
            self.state = "plain"
            self.pending = []  # application data that arrives before start_tls() returns

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            if self.state == "tls":
                self.transport.write(data)
            elif self.state == "upgrading":
                self.pending.append(data)
            else:
                self.buffer += data
                if self.buffer == b"STARTTLS\n":
                    self.state = "upgrading"
                    self.transport.write(b"OK\n")
                    asyncio.ensure_future(self.upgrade())

        async def upgrade(self):
            self.transport = await loop.start_tls(self.transport, self, server_ssl_context, server_side=True)
            self.state = "tls"
            for data in self.pending:
                self.transport.write(data)

        def eof_received(self):
            self.transport.close()

    class Client(asyncio.Protocol):
        def __init__(self):
            self.received = bytearray()
            self.ok = loop.create_future()
            self.lost = loop.create_future()

        def data_received(self, data):
            self.received += data
            if self.received == b"OK\n" and not self.ok.done():
                self.received.clear()
                self.ok.set_result(None)

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        server = await loop.create_server(UpgradingServer, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        transport, client = await loop.create_connection(Client, *address)
        transport.write(b"STARTTLS\n")
        await client.ok
        tls_transport = await loop.start_tls(transport, client, client_ssl_context, server_hostname="localhost")
        assert tls_transport.get_extra_info("sslcontext") is client_ssl_context
        payload = random_payload(200_000, 5)
        tls_transport.write(payload)
        while len(client.received) < len(payload):
            await asyncio.sleep(0.01)
        assert bytes(client.received) == payload
        tls_transport.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_streams_start_tls(loop, server_ssl_context, client_ssl_context):
    async def handler(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_ssl_context)
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ssl_context, server_hostname="localhost")
        assert writer.get_extra_info("ssl_object") is not None
        writer.write(b"secret\n")
        assert await reader.readline() == b"SECRET\n"
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_tls_with_a_slow_application_reader_is_byte_exact(loop, server_ssl_context, client_ssl_context):
    # A reader that stops reading makes asyncio's SSL layer pause the TCP transport underneath and
    # resume it later: the pause/resume path of the loop's transport under TLS.
    payload = random_payload(4 * 1024 * 1024, 9)

    async def sender(reader, writer):
        writer.write(payload)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(sender, "127.0.0.1", 0, ssl=server_ssl_context)
        address = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(
            *address, ssl=client_ssl_context, server_hostname="localhost", limit=16 * 1024
        )
        received = bytearray()
        while len(received) < len(payload):
            chunk = await reader.read(32 * 1024)
            if not chunk:
                break
            received += chunk
            if len(received) % 5 == 0:
                await asyncio.sleep(0.001)
        assert len(received) == len(payload)
        assert bytes(received) == payload
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
