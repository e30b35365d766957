"""fork() with a running loop, compared with the stdlib loop: in the child there is no running
loop (``get_running_loop`` raises), closing the inherited loop does not disturb the parent, and a
new loop of the same kind works; in the parent the loop keeps serving. Same test body on the
stdlib loop and on ringloop's two backends."""

import asyncio
import os
import socket

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_round_trip(port, payload):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    got = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return got


def child_checks(loop_factory, inherited):
    """Runs in the child; returns an exit status (0 = every check held)."""
    try:
        asyncio.get_running_loop()
        return 10  # the parent's running loop must not be "running" in the child
    except RuntimeError:
        pass
    # Closing the inherited loop (what a child that does not need it should do) must not touch
    # the parent's kernel objects.
    try:
        inherited.close()
    except RuntimeError:
        pass  # the stdlib refuses to close a loop it considers running: also fine
    fresh = loop_factory()
    try:
        async def scenario():
            a, b = socket.socketpair()
            reader, writer = await asyncio.open_connection(sock=a)
            b.sendall(b"child")
            data = await reader.readexactly(5)
            writer.close()
            b.close()
            await asyncio.sleep(0.01)
            return data

        if fresh.run_until_complete(asyncio.wait_for(scenario(), 10)) != b"child":
            return 11
    finally:
        fresh.close()
    return 0


def test_fork_with_running_loop(loop_factory):
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        async def parent():
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            assert await echo_round_trip(port, b"before") == b"before"
            # A far timer and the listening socket are armed in the kernel at fork time.
            far = loop.call_later(3600, lambda: None)
            pid = os.fork()
            if pid == 0:
                status = 99
                try:
                    status = child_checks(loop_factory, loop)
                finally:
                    os._exit(status)
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, f"child failed: status {status}"
            # The parent's loop is intact: the server still accepts and echoes, timers fire.
            assert await echo_round_trip(port, b"after") == b"after"
            await asyncio.sleep(0.01)
            far.cancel()
            server.close()
            await server.wait_closed()

        loop.run_until_complete(asyncio.wait_for(parent(), 60))
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
