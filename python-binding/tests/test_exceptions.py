"""The exception handler receives what escapes callbacks, tasks and protocol methods."""

import asyncio
import contextlib
import gc
import logging
import socket

import pytest

from support import run


def _collecting_handler(contexts):
    def handler(loop, context):
        contexts.append(context)

    return handler


def test_exception_in_a_callback_goes_to_the_handler_and_the_loop_goes_on(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    assert loop.get_exception_handler() is not None
    after = []

    def bad():
        raise ZeroDivisionError("in callback")

    loop.call_soon(bad)
    loop.call_soon(after.append, "still running")
    loop.call_later(0.01, bad)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert after == ["still running"]
    assert len(contexts) == 2
    for context in contexts:
        assert isinstance(context["exception"], ZeroDivisionError)
        assert "message" in context


def test_exception_in_a_threadsafe_callback_goes_to_the_handler(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    loop.call_soon_threadsafe(lambda: 1 / 0)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert [type(c["exception"]) for c in contexts] == [ZeroDivisionError]


def test_never_retrieved_task_exception_is_reported(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))

    async def fail():
        raise ValueError("nobody awaits me")

    async def main():
        loop.create_task(fail())
        await asyncio.sleep(0.01)

    run(loop, main())
    gc.collect()
    assert any(isinstance(c.get("exception"), ValueError) for c in contexts), contexts


def test_exception_in_data_received_is_reported_and_closes_the_transport(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))

    class FailingProtocol(asyncio.Protocol):
        def __init__(self):
            self.lost = loop.create_future()

        def data_received(self, data):
            raise RuntimeError("protocol bug")

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        protocols = []

        def factory():
            protocols.append(FailingProtocol())
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"trigger")
        assert await reader.read() == b""  # the server side was closed
        await protocols[0].lost
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert any(isinstance(c.get("exception"), RuntimeError) for c in contexts), contexts


class DataReceivedWithAMonkeypatch(asyncio.Protocol):
    """Replaces its own data_received after connection_made: asyncio looks the method up on
    every delivery, so the replacement must be the one called."""

    def __init__(self, loop):
        self.seen = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.data_received = self.seen.append

    def data_received(self, data):
        raise AssertionError("the class's data_received ran")

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class NoDataReceived(asyncio.BaseProtocol):
    """Neither a Protocol nor a BufferedProtocol: data for it is a protocol error."""

    def __init__(self, loop):
        self.lost = loop.create_future()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.parametrize("protocol_class", [NoDataReceived, DataReceivedWithAMonkeypatch])
def test_data_received_is_looked_up_on_the_protocol_as_asyncio_does(loop, protocol_class):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    protocols = []

    def factory():
        protocols.append(protocol_class(loop))
        return protocols[-1]

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"data")
        await writer.drain()
        if protocol_class is NoDataReceived:
            assert await reader.read() == b""  # the server side was closed
            await protocols[0].lost
        else:
            while not protocols or protocols[0].seen != [b"data"]:
                await asyncio.sleep(0.001)
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
    if protocol_class is NoDataReceived:
        assert [type(c.get("exception")) for c in contexts] == [AttributeError], contexts
        assert "data_received" in str(contexts[0]["exception"])
    else:
        assert contexts == []


def test_call_exception_handler_uses_the_default_handler_without_a_custom_one(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "custom message", "exception": KeyError("k")})
    assert any("custom message" in r.getMessage() for r in caplog.records)


def test_a_failing_exception_handler_does_not_break_the_loop(loop, caplog):
    def broken_handler(loop, context):
        raise RuntimeError("handler bug")

    loop.set_exception_handler(broken_handler)
    after = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(after.append, "ran")
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert after == ["ran"]
    # The handler's own failure is logged, not swallowed.
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records), caplog.records


def test_set_exception_handler_rejects_non_callables(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")


def test_keyboard_interrupt_in_a_callback_propagates_out_of_the_loop(loop):
    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    # The loop stays usable.
    assert loop.run_until_complete(asyncio.sleep(0, result="again")) == "again"


@contextlib.contextmanager
def _two_readable_pairs():
    # Two socket pairs (a, b) and (c, d) whose a and c each have a byte to read: b"x", b"y".
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        b.send(b"x")
        d.send(b"y")
        yield a, b, c, d


def test_exception_in_a_reader_or_writer_callback_goes_to_the_handler(loop):
    # A readiness callback fails as a call_soon callback does: reported with asyncio's message
    # and handle, and the other callbacks of the same iteration still run.
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    with _two_readable_pairs() as (a, b, c, d):
        seen = []

        def bad_reader():
            raise ZeroDivisionError("reader")

        def bad_writer(tag):
            raise ValueError(tag)

        loop.add_reader(a, bad_reader)
        loop.add_reader(c, seen.append, "c readable")
        loop.add_writer(b, bad_writer, "writer")
        try:
            loop.call_later(0.05, loop.stop)
            loop.run_forever()
        finally:
            loop.remove_reader(a)
            loop.remove_reader(c)
            loop.remove_writer(b)
    assert seen and set(seen) == {"c readable"}
    by_type = {}
    for context in contexts:
        by_type.setdefault(type(context["exception"]), []).append(context)
    assert set(by_type) == {ZeroDivisionError, ValueError}, contexts
    for context in by_type[ZeroDivisionError]:
        assert context["message"].startswith("Exception in callback ")
        assert "bad_reader" in context["message"]
        assert isinstance(context["handle"], asyncio.Handle)
    for context in by_type[ValueError]:
        assert "bad_writer" in context["message"]  # (3.13 leaves the arguments out)


def test_keyboard_interrupt_in_a_reader_callback_stops_the_loop_and_keeps_the_other_events(loop):
    # As in asyncio, the interrupt leaves the loop at once; a reader that was ready in the same
    # iteration runs on the next run instead of being lost.
    with _two_readable_pairs() as (a, b, c, d):
        calls = []

        def interrupting_reader():
            calls.append(a.recv(1))
            loop.remove_reader(a)
            raise KeyboardInterrupt

        def plain_reader():
            calls.append(c.recv(1))
            loop.remove_reader(c)

        loop.add_reader(a, interrupting_reader)
        loop.add_reader(c, plain_reader)
        try:
            with pytest.raises(KeyboardInterrupt):
                loop.run_forever()
            loop.call_soon(loop.stop)
            loop.run_forever()
        finally:
            loop.remove_reader(a)
            loop.remove_reader(c)
    assert sorted(calls) == [b"x", b"y"]
