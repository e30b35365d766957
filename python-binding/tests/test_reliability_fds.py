"""No fd leaks: create and close 1,000 servers, 1,000 connections and 1,000 subprocesses on each
loop, and count /proc/self/fd before and after (the loop itself is closed too, so its own fds
count). Run side by side on the stdlib loop and ringloop's two backends."""

import asyncio
import os
import shutil

ROUNDS = 1000
BATCH = 50
CAT = shutil.which("cat") or "/bin/cat"


def open_fd_count():
    return len(os.listdir("/proc/self/fd"))


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def servers():
    loop = asyncio.get_running_loop()
    for _ in range(ROUNDS):
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        server.close()
        await server.wait_closed()


async def connections():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = i.to_bytes(4, "little") * 8
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()

    for start in range(0, ROUNDS, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, start + BATCH)))
    server.close()
    await server.wait_closed()


async def subprocesses():
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            CAT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate(str(i).encode())
        assert out == str(i).encode() and proc.returncode == 0

    for start in range(0, ROUNDS, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, start + BATCH)))


def run_on_fresh_loop(loop_factory, scenario):
    before = open_fd_count()
    loop = loop_factory()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 300))
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    after = open_fd_count()
    assert after == before, f"{after - before} fds leaked by {scenario.__name__}"


def test_1000_servers_leak_no_fd(loop_factory):
    run_on_fresh_loop(loop_factory, servers)


def test_1000_connections_leak_no_fd(loop_factory):
    run_on_fresh_loop(loop_factory, connections)


def test_1000_subprocesses_leak_no_fd(loop_factory):
    run_on_fresh_loop(loop_factory, subprocesses)
