"""Errors that must not take the process (or the loop) down: KeyboardInterrupt during
run_forever, raised by a callback or delivered as SIGINT while the loop waits in its poll, leaves
the loop usable; an exception in a protocol callback reaches the loop's exception handler and
closes that transport, while the loop keeps serving others. Same test body on the stdlib loop and
on ringloop's two backends."""

import asyncio
import os
import signal
import threading

import pytest


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_round_trip(port, payload=b"still serving"):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    got = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return got


def test_keyboard_interrupt_from_callback_leaves_loop_usable(loop):
    def interrupt():
        raise KeyboardInterrupt

    server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running() and not loop.is_closed()
    assert loop.run_until_complete(echo_round_trip(port)) == b"still serving"
    server.close()
    loop.run_until_complete(server.wait_closed())


def test_sigint_while_waiting_in_poll_leaves_loop_usable(loop):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT is delivered to the main thread")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT does not raise KeyboardInterrupt in this process")
    server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    # The loop waits for a far timer; the signal arrives while it is blocked in its poll.
    far = loop.call_later(3600, lambda: None)
    killer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        killer.cancel()
    far.cancel()
    assert not loop.is_running()
    assert loop.run_until_complete(echo_round_trip(port)) == b"still serving"
    server.close()
    loop.run_until_complete(server.wait_closed())


class Faulty(asyncio.Protocol):
    """Raises from the callback named by ``where``; records connection_lost."""

    instances = []

    def __init__(self, where):
        self.where = where
        self.lost = asyncio.get_running_loop().create_future()
        Faulty.instances.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.where == "data_received":
            raise ZeroDivisionError("boom in data_received")
        self.transport.write(data)

    def eof_received(self):
        if self.where == "eof_received":
            raise ZeroDivisionError("boom in eof_received")
        return False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize("where", ["data_received", "eof_received"])
def test_exception_in_protocol_callback_reaches_handler_and_closes_transport(loop, where):
    contexts = []
    loop.set_exception_handler(lambda lp, context: contexts.append(context))
    Faulty.instances.clear()

    async def scenario():
        server = await loop.create_server(lambda: Faulty(where), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"trigger")
        if where == "eof_received":
            assert await reader.readexactly(7) == b"trigger"
            writer.write_eof()
        # The server side is closed: the client sees EOF (or a reset), never a hang.
        try:
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        writer.close()
        faulty = Faulty.instances[0]
        await asyncio.wait_for(faulty.lost, 10)
        assert faulty.transport.is_closing()
        # The loop still serves other connections.
        healthy = await loop.create_server(Echo, "127.0.0.1", 0)
        assert await echo_round_trip(healthy.sockets[0].getsockname()[1]) == b"still serving"
        healthy.close()
        server.close()
        await server.wait_closed()
        await healthy.wait_closed()

    loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    errors = [c.get("exception") for c in contexts]
    assert any(
        isinstance(e, ZeroDivisionError) and f"boom in {where}" in str(e) for e in errors
    ), f"the exception did not reach the handler: {contexts!r}"
