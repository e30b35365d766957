"""Pipes, subprocesses and signals."""

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from support import open_fds, run


class PipeCollector(asyncio.Protocol):
    def __init__(self, loop):
        self.received = bytearray()
        self.types = set()  # of what data_received() was given: bytes, as asyncio gives
        self.eof = False
        self.lost = loop.create_future()

    def data_received(self, data):
        self.types.add(type(data))
        self.received += data

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class WritePipeProtocol(asyncio.BaseProtocol):
    def __init__(self, loop):
        self.lost = loop.create_future()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_read_and_write_pipes_are_byte_exact(loop):
    async def main():
        r, w = os.pipe()
        read_transport, collector = await loop.connect_read_pipe(lambda: PipeCollector(loop), os.fdopen(r, "rb", 0))
        write_transport, writer = await loop.connect_write_pipe(lambda: WritePipeProtocol(loop), os.fdopen(w, "wb", 0))
        assert write_transport.get_extra_info("pipe") is not None
        payload = os.urandom(2 * 1024 * 1024)  # far more than the pipe's capacity
        write_transport.write(payload[:1000])
        write_transport.write(payload[1000:])
        assert write_transport.get_write_buffer_size() >= 0
        write_transport.close()
        assert await writer.lost is None
        assert await collector.lost is None
        assert collector.eof
        assert bytes(collector.received) == payload
        assert collector.types == {bytes}

    run(loop, main())


def test_read_pipe_pause_and_resume(loop):
    async def main():
        r, w = os.pipe()
        transport, collector = await loop.connect_read_pipe(lambda: PipeCollector(loop), os.fdopen(r, "rb", 0))
        transport.pause_reading()
        assert not transport.is_reading()
        os.write(w, b"while paused")
        await asyncio.sleep(0.05)
        assert collector.received == b""
        transport.resume_reading()
        os.close(w)
        await collector.lost
        assert collector.received == b"while paused"

    run(loop, main())


def test_read_pipe_paused_right_after_a_poll_that_brought_bytes_loses_none(loop):
    # As for sockets: a callback ready before the poll pauses reading after the poll brought
    # bytes, before they are handled. They must wait for the resume, not vanish.
    async def main():
        r, w = os.pipe()
        transport, collector = await loop.connect_read_pipe(lambda: PipeCollector(loop), os.fdopen(r, "rb", 0))
        await asyncio.sleep(0.02)
        os.write(w, b"hello")
        loop.call_soon(transport.pause_reading)
        await asyncio.sleep(0.05)
        assert collector.received == b""
        transport.resume_reading()
        os.write(w, b", world")
        os.close(w)
        await collector.lost
        assert collector.received == b"hello, world"

    run(loop, main())


def test_read_pipe_paused_from_data_received_gets_nothing_until_resumed(loop):
    # Each chunk pauses reading until a later turn of the loop: bytes that arrive meanwhile (a
    # receive in flight when reading paused) wait for the resume, in order.
    class Pausing(PipeCollector):
        def __init__(self, loop):
            super().__init__(loop)
            self.calls_while_paused = 0

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            if not self.transport.is_reading():
                self.calls_while_paused += 1
            super().data_received(data)
            self.transport.pause_reading()
            loop.call_later(0.001, self.transport.resume_reading)

    async def main():
        r, w = os.pipe()
        transport, collector = await loop.connect_read_pipe(lambda: Pausing(loop), os.fdopen(r, "rb", 0))
        payload = os.urandom(3 * 1024 * 1024)
        writer = loop.run_in_executor(None, _write_and_close, w, payload)
        assert await collector.lost is None
        await writer
        assert bytes(collector.received) == payload
        assert collector.calls_while_paused == 0
        assert collector.eof

    run(loop, main())


def _write_and_close(fd, payload):
    with os.fdopen(fd, "wb", 0) as pipe:
        view = memoryview(payload)
        for start in range(0, len(view), 100_000):
            pipe.write(view[start : start + 100_000])


def test_read_pipe_data_received_error_is_reported_and_reading_goes_on(loop):
    reported = []
    loop.set_exception_handler(lambda _, context: reported.append(context))

    class FailsOnce(PipeCollector):
        def data_received(self, data):
            super().data_received(data)
            if len(reported) == 0 and not hasattr(self, "failed"):
                self.failed = True
                raise ZeroDivisionError("from data_received")

    async def main():
        r, w = os.pipe()
        transport, collector = await loop.connect_read_pipe(lambda: FailsOnce(loop), os.fdopen(r, "rb", 0))
        os.write(w, b"one")
        while not collector.received:
            await asyncio.sleep(0.001)
        os.write(w, b"two")
        os.close(w)
        assert await collector.lost is None
        assert bytes(collector.received) == b"onetwo"
        assert [type(c["exception"]) for c in reported] == [ZeroDivisionError]
        assert reported[0]["message"].startswith("Exception in callback ")
        assert "_read_ready" in reported[0]["message"]

    run(loop, main())


def test_read_pipe_closed_while_reading_closes_its_fd(loop):
    async def main():
        r, w = os.pipe()
        transport, collector = await loop.connect_read_pipe(lambda: PipeCollector(loop), os.fdopen(r, "rb", 0))
        os.write(w, b"some bytes")
        while not collector.received:
            await asyncio.sleep(0.001)
        transport.close()
        assert await collector.lost is None
        # The read end really is closed: nobody is left to read.
        with pytest.raises(BrokenPipeError):
            os.write(w, b"nobody reads this")
        os.close(w)

    run(loop, main())


def test_read_pipe_on_a_terminal(loop):
    # A pty is a character device, not a pipe: read as asyncio reads it.
    import pty

    async def main():
        master, slave = pty.openpty()
        try:
            transport, collector = await loop.connect_read_pipe(lambda: PipeCollector(loop), os.fdopen(master, "rb", 0))
            os.write(slave, b"typed\n")
            while b"typed" not in collector.received:
                await asyncio.sleep(0.001)
            transport.close()
            await collector.lost
        finally:
            os.close(slave)

    run(loop, main())


def test_write_pipe_reports_a_closed_reader(loop):
    async def main():
        r, w = os.pipe()
        transport, writer = await loop.connect_write_pipe(lambda: WritePipeProtocol(loop), os.fdopen(w, "wb", 0))
        os.close(r)
        transport.write(b"nobody reads this")
        exc = await writer.lost
        assert exc is None or isinstance(exc, (BrokenPipeError, ConnectionResetError))
        assert transport.is_closing()

    run(loop, main())


def test_subprocess_exec_communicate(loop):
    async def main():
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data.upper()); sys.stderr.write('err')",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert process.pid > 0
        stdout, stderr = await process.communicate(b"hello subprocess" * 10000)
        assert stdout == b"HELLO SUBPROCESS" * 10000
        assert stderr == b"err"
        assert process.returncode == 0

    run(loop, main())


def test_subprocess_exit_codes_and_signals(loop):
    async def main():
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(7)")
        assert await process.wait() == 7
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
        process.terminate()
        assert await process.wait() == -signal.SIGTERM
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
        process.kill()
        assert await process.wait() == -signal.SIGKILL
        assert process.returncode == -signal.SIGKILL

    run(loop, main())


def test_subprocess_shell_and_large_output(loop):
    async def main():
        process = await asyncio.create_subprocess_shell(
            "printf 'shell:%s' \"$0\"; exit 3", stdout=subprocess.PIPE
        )
        stdout, _ = await process.communicate()
        assert stdout.startswith(b"shell:") and process.returncode == 3
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 16384)",
            stdout=subprocess.PIPE,
        )
        data = await process.stdout.read()
        assert data == bytes(range(256)) * 16384
        assert await process.wait() == 0

    run(loop, main())


def test_subprocess_protocol_callbacks(loop):
    class Recorder(asyncio.SubprocessProtocol):
        def __init__(self):
            self.output = {1: bytearray(), 2: bytearray()}
            self.exited = loop.create_future()
            self.closed = loop.create_future()

        def pipe_data_received(self, fd, data):
            self.output[fd] += data

        def process_exited(self):
            self.exited.set_result(None)

        def connection_lost(self, exc):
            self.closed.set_result(exc)

    async def main():
        transport, protocol = await loop.subprocess_exec(
            Recorder, sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(int(input()))",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert transport.get_pid() > 0
        transport.get_pipe_transport(0).write(b"5\n")
        await protocol.exited
        await protocol.closed
        assert transport.get_returncode() == 5
        assert bytes(protocol.output[1]).strip() == b"out"
        assert bytes(protocol.output[2]).strip() == b"err"
        transport.close()

    run(loop, main())


def test_subprocess_pipes_are_closed_afterwards(loop):
    async def main():
        async def one():
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "print('x')",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            await process.communicate()
            assert process.returncode == 0

        await one()  # warm-up: lazily created loop resources (e.g. a child watcher) stay
        await asyncio.sleep(0.05)
        before = open_fds()
        for _ in range(10):
            await one()
        await asyncio.sleep(0.05)
        assert open_fds() == before

    run(loop, main())


def test_subprocess_exec_of_a_missing_program_raises(loop):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")

    run(loop, main())


def test_signal_handler_runs_in_the_loop_with_its_arguments(loop):
    received = []

    def on_signal(*args):
        received.append(args)
        if len(received) == 2:
            loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1")
    loop.add_signal_handler(signal.SIGUSR2, on_signal, "usr2", 2)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(0.02, os.kill, os.getpid(), signal.SIGUSR2)
        loop.run_forever()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR2) is True
    assert received == [("usr1",), ("usr2", 2)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_wakes_a_loop_waiting_without_timers(loop):
    import threading

    loop.add_signal_handler(signal.SIGUSR1, loop.stop)
    try:
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_add_signal_handler_rejects_bad_input(loop):
    with pytest.raises(ValueError):
        loop.add_signal_handler(0, lambda: None)
    with pytest.raises(ValueError):
        loop.add_signal_handler(signal.NSIG + 1, lambda: None)
    with pytest.raises((RuntimeError, OSError)):
        loop.add_signal_handler(signal.SIGKILL, lambda: None)

    async def coroutine_function():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coroutine_function)


def test_sigint_handler_replacement_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
