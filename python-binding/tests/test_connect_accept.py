"""Connection set-up: create_connection / open_connection to an IP address, sock_connect while
the connection is in progress, and the server's accept path (failures included)."""

import asyncio
import contextlib
import errno
import os
import resource
import select
import socket

import pytest

from support import has_ipv6_loopback, open_fds, run
from test_tcp import CollectingClientProtocol, echo_once, start_echo_server


def nonblocking(sock):
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def stuck_listener():
    """A listening socket whose accept queue is full: a new connect() to it stays in progress
    (the kernel drops its SYNs) until something is accepted. Closed, with the connections that
    fill it, on exit."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(8):
            filler = stack.enter_context(nonblocking(socket.socket()))
            filler.connect_ex(listener.getsockname())
            _, writable, _ = select.select([], [filler], [], 0.1)
            if not writable:
                yield listener
                return
        raise AssertionError("the accept queue never filled")


def watched(loop):
    """How many things the loop watches: its selector's keys (stdlib) or its completion
    handlers (ringloop)."""
    handlers = getattr(loop, "_handlers", None)
    return len(handlers) if handlers is not None else len(loop._selector.get_map())


async def assert_streams_echo(address, payload):
    """One streams connection to an echo server at ``address``: ``payload`` comes back whole."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(payload)
    writer.write_eof()
    assert await reader.read() == payload
    writer.close()
    await writer.wait_closed()


def refused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stdlib_error(coro_factory):
    """The exception the stdlib loop raises from ``coro_factory(loop)``."""
    reference = asyncio.new_event_loop()
    try:
        reference.run_until_complete(coro_factory(reference))
    except Exception as exc:
        return exc
    finally:
        reference.close()
    raise AssertionError("the stdlib loop raised nothing")


def test_refused_connection_raises_what_the_stdlib_raises(loop):
    port = refused_port()

    def connect(any_loop):
        return any_loop.create_connection(asyncio.Protocol, "127.0.0.1", port)

    async def sock_connect(any_loop):
        with nonblocking(socket.socket()) as sock:
            await any_loop.sock_connect(sock, ("127.0.0.1", port))

    for attempt in (connect, sock_connect):
        expected = stdlib_error(attempt)
        with pytest.raises(ConnectionRefusedError) as raised:
            run(loop, attempt(loop))
        assert raised.value.errno == errno.ECONNREFUSED
        assert str(raised.value) == str(expected)


def test_open_connection_to_an_ip_address_is_byte_exact_and_made_before_it_returns(loop):
    async def main():
        server, address = await start_echo_server(loop)
        made = []

        class Client(CollectingClientProtocol):
            def connection_made(self, transport):
                made.append(transport)
                super().connection_made(transport)

        transport, protocol = await loop.create_connection(lambda: Client(loop), *address)
        assert made == [transport]  # connection_made() ran before create_connection returned
        assert transport.get_extra_info("peername") == address
        assert transport.get_extra_info("socket").proto == socket.IPPROTO_TCP
        payload = os.urandom(100_000)
        transport.write(payload)
        transport.write_eof()
        assert await protocol.done == payload

        await assert_streams_echo(address, b"streams too")
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_create_connection_to_an_ipv6_address(loop):
    async def main():
        server, address = await start_echo_server(loop, host="::1")
        assert await echo_once(loop, address, b"over IPv6") == b"over IPv6"
        transport, protocol = await loop.create_connection(
            lambda: CollectingClientProtocol(loop), "::1", address[1]
        )
        assert transport.get_extra_info("socket").family == socket.AF_INET6
        assert transport.get_extra_info("peername")[:2] == ("::1", address[1])
        transport.close()
        await protocol.done
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_sock_connect_cancelled_while_connecting_stops_watching_the_socket(loop):
    async def main():
        with stuck_listener() as listener, nonblocking(socket.socket()) as sock:
            before = watched(loop)
            task = asyncio.ensure_future(loop.sock_connect(sock, listener.getsockname()))
            await asyncio.sleep(0.05)
            assert not task.done()  # the connection is still in progress
            assert watched(loop) == before + 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert watched(loop) == before
            # The socket is the caller's again: a writer can be added for it.
            writable = loop.create_future()
            loop.add_writer(sock, lambda: writable.done() or writable.set_result(True))
            try:
                # Still in progress: not writable until the listener accepts.
                await asyncio.sleep(0.05)
                assert not writable.done()
            finally:
                assert loop.remove_writer(sock)

    run(loop, main())


def test_create_connection_cancelled_while_connecting_closes_its_socket(loop):
    async def main():
        with stuck_listener() as listener:
            before = open_fds()
            host, port = listener.getsockname()
            task = asyncio.ensure_future(loop.create_connection(asyncio.Protocol, host, port))
            await asyncio.sleep(0.05)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert open_fds() == before

    run(loop, main())


def test_a_failing_protocol_factory_drops_that_connection_and_the_server_goes_on(loop):
    async def main():
        reported = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        loop.set_debug(True)  # asyncio reports these failures in debug mode only
        calls = 0

        class Boom(Exception):
            pass

        def factory():
            nonlocal calls
            calls += 1
            if calls == 1:
                raise Boom("no protocol for you")
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(), echo)

        async def echo(reader, writer):
            writer.write(await reader.read())
            writer.close()

        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        refused_reader, refused_writer = await asyncio.open_connection(*address)
        while not reported:
            await asyncio.sleep(0.01)
        assert reported[0]["message"] == "Error on transport creation for incoming connection"
        assert isinstance(reported[0]["exception"], Boom)
        refused_writer.close()

        await assert_streams_echo(address, b"the next connection is served")
        server.close()
        await server.wait_closed()
        assert calls == 2
        assert len(reported) == 1

    run(loop, main())


def test_accept_out_of_fds_backs_off_reports_it_and_serves_the_connection_later(loop):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ballast = []

    async def main():
        reported = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        server, address = await start_echo_server(loop)
        client = nonblocking(socket.socket())
        try:
            # Every fd the process may have is taken: the client's connection completes in the
            # kernel, and the server's accept() fails with EMFILE.
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 2, hard))
            try:
                while True:
                    ballast.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
            await loop.sock_connect(client, address)
            while not reported:
                await asyncio.sleep(0.01)
            assert reported[0]["message"] == "socket.accept() out of system resource"
            assert reported[0]["exception"].errno == errno.EMFILE
            for fd in ballast:
                os.close(fd)
            ballast.clear()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            freed = loop.time()
            # Accepting resumes after asyncio's back-off (constants.ACCEPT_RETRY_DELAY, 1 s).
            await loop.sock_sendall(client, b"served after the back-off")
            client.shutdown(socket.SHUT_WR)
            received = b""
            while True:
                chunk = await loop.sock_recv(client, 1024)
                if not chunk:
                    break
                received += chunk
            assert received == b"served after the back-off"
            assert loop.time() - freed > 0.5  # not before the back-off
            # (The stdlib loop goes on calling accept() after the failure, up to the backlog,
            # and reports each one; ringloop stops at the first.)
            assert all(context["message"] == reported[0]["message"] for context in reported)
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    try:
        run(loop, main())
    finally:
        for fd in ballast:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("debug", [False, True], ids=["", "debug"])
def test_a_failing_connection_made_is_reported_and_the_connection_still_works(loop, debug):
    async def main():
        reported = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        server, address = await start_echo_server(loop)

        class Careless(CollectingClientProtocol):
            def connection_made(self, transport):
                super().connection_made(transport)
                raise ZeroDivisionError("in connection_made")

        # create_connection still returns, and the transport reads and writes.
        loop.set_debug(debug)
        try:
            transport, protocol = await loop.create_connection(lambda: Careless(loop), *address)
        finally:
            loop.set_debug(False)
        assert len(reported) == 1
        context = reported[0]
        assert isinstance(context["exception"], ZeroDivisionError)
        assert context["message"].startswith("Exception in callback ")
        assert "connection_made" in context["message"]
        if debug:
            # asyncio's report shows the callback's arguments in debug mode (on 3.13 only then).
            assert "connection_made(<" in context["message"], context["message"]
        assert context["handle"]._callback == protocol.connection_made
        transport.write(b"after the failure")
        transport.write_eof()
        assert await protocol.done == b"after the failure"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_keyboard_interrupt_in_connection_made_stops_the_loop_and_the_connection_goes_on(loop):
    server, address = run(loop, start_echo_server(loop))
    interrupted = []

    class Interrupting(CollectingClientProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            if not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt

    task = loop.create_task(loop.create_connection(lambda: Interrupting(loop), *address))
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    # Running the loop again finishes what the interrupted iteration left: the waiter, reading.
    transport, protocol = run(loop, task)
    transport.write(b"resumed")
    transport.write_eof()
    assert run(loop, protocol.done) == b"resumed"
    server.close()
    run(loop, server.wait_closed())
