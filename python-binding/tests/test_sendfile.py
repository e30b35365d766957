"""loop.sendfile over transports and loop.sock_sendfile over sockets."""

import asyncio
import os

import pytest

from support import run
from test_sockets import connected_pair
from test_tcp import CollectingClientProtocol


@pytest.fixture
def data_file(tmp_path):
    content = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    return path, content


def test_sendfile_over_a_transport_is_byte_exact(loop, data_file):
    path, content = data_file

    async def main():
        accepted = loop.create_future()

        class Sender(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        server = await loop.create_server(Sender, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        client_transport, collector = await loop.create_connection(lambda: CollectingClientProtocol(loop), *address)
        sender = await accepted
        with open(path, "rb") as file:
            sent = await loop.sendfile(sender, file)
            assert sent == len(content)
            assert file.tell() == len(content)
            sent = await loop.sendfile(sender, file, offset=10, count=1000)
            assert sent == 1000
            assert file.tell() == 1010
        sender.close()
        assert await collector.done == content + content[10:1010]
        client_transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_sock_sendfile_is_byte_exact(loop, data_file):
    path, content = data_file

    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            async def receive(count):
                received = bytearray()
                while len(received) < count:
                    chunk = await loop.sock_recv(server_side, 1 << 16)
                    assert chunk
                    received += chunk
                return bytes(received)

            with open(path, "rb") as file:
                receiving = asyncio.ensure_future(receive(len(content)))
                assert await loop.sock_sendfile(client, file) == len(content)
                assert await receiving == content
                receiving = asyncio.ensure_future(receive(5000))
                assert await loop.sock_sendfile(client, file, offset=123, count=5000) == 5000
                assert await receiving == content[123:5123]
                # fallback=False still works on Linux: os.sendfile is available.
                receiving = asyncio.ensure_future(receive(100))
                assert await loop.sock_sendfile(client, file, 0, 100, fallback=False) == 100
                assert await receiving == content[:100]

    run(loop, main())


def test_sendfile_rejects_text_files_and_bad_arguments(loop, data_file, tmp_path):
    path, _ = data_file

    async def main():
        client, server_side = await connected_pair(loop)
        with client, server_side:
            with open(path, "r", encoding="latin-1") as text_file:
                with pytest.raises(ValueError):
                    await loop.sock_sendfile(client, text_file)
            with open(path, "rb") as file:
                with pytest.raises(ValueError):
                    await loop.sock_sendfile(client, file, offset=-1)
                with pytest.raises(ValueError):
                    await loop.sock_sendfile(client, file, count=0)

    run(loop, main())
