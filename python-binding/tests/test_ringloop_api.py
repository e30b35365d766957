"""ringloop's own API: backends, new_event_loop, run, install/EventLoopPolicy, by Python version."""

import asyncio
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import ringloop_or_skip


@pytest.fixture
def ringloop():
    return ringloop_or_skip()


def run_python(code, **env):
    """Runs ``code`` in a fresh interpreter (policies are process-global) and returns stdout."""
    environment = dict(os.environ)
    environment.pop("RINGLOOP_BACKEND", None)
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=environment, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_loop_reports_its_backend(loop_factory):
    if not loop_factory.is_ringloop:
        pytest.skip("ringloop-only behaviour")
    loop = loop_factory()
    try:
        assert loop.backend == loop_factory.backend
        assert loop_factory.backend in repr(loop)
    finally:
        loop.close()


def test_loop_is_an_abstract_event_loop(ringloop):
    loop = ringloop.new_event_loop()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert isinstance(loop, ringloop.Loop)
        assert loop.backend in ("io_uring", "epoll")
    finally:
        loop.close()


def test_unknown_backend_is_a_clear_error(ringloop):
    with pytest.raises((ValueError, OSError)):
        ringloop.Loop(backend="kqueue")


def test_ringloop_backend_environment_variable_selects_the_default(ringloop):
    code = "import ringloop; loop = ringloop.new_event_loop(); print(loop.backend); loop.close()"
    assert run_python(code, RINGLOOP_BACKEND="epoll") == "epoll"
    assert run_python(code, RINGLOOP_BACKEND="io_uring") == "io_uring"
    # An explicit backend argument wins over the environment.
    explicit = "import ringloop; loop = ringloop.Loop(backend='io_uring'); print(loop.backend); loop.close()"
    assert run_python(explicit, RINGLOOP_BACKEND="epoll") == "io_uring"


def test_the_receive_pool_is_sized_for_the_backend_that_runs(ringloop, monkeypatch):
    # epoll lends buffers last-in first-out and starves receives when more connections are
    # ready than it has buffers, so it gets a larger pool than io_uring's ring does.
    from ringloop import _loop

    def pool_of(**kwargs):
        loop = ringloop.Loop(**kwargs)
        try:
            return loop.backend, loop._reactor.buffer_count
        finally:
            loop.close()

    assert pool_of(backend="epoll") == ("epoll", _loop._RECV_BUFFER_COUNT_EPOLL)
    try:
        uring = pool_of(backend="io_uring")
    except OSError:
        uring = None  # no io_uring on this kernel
    if uring is not None:
        assert uring == ("io_uring", _loop._RECV_BUFFER_COUNT)

    # The library choosing epoll by itself (a kernel without io_uring): the reactor it made with
    # io_uring's pool is freed and made again with epoll's.
    made = []
    real_reactor = _loop.Reactor

    def library_picks_epoll(backend, **kwargs):
        reactor = real_reactor("epoll" if backend is None else backend, **kwargs)
        made.append(reactor)
        return reactor

    monkeypatch.delenv("RINGLOOP_BACKEND", raising=False)
    monkeypatch.setattr(_loop, "Reactor", library_picks_epoll)
    assert pool_of() == ("epoll", _loop._RECV_BUFFER_COUNT_EPOLL)
    assert [r.buffer_count for r in made] == [_loop._RECV_BUFFER_COUNT, _loop._RECV_BUFFER_COUNT_EPOLL]
    assert made[0].closed and made[1].closed


def test_run_uses_a_ringloop_loop_and_closes_it(ringloop):
    seen = {}

    async def main():
        loop = asyncio.get_running_loop()
        seen["loop"] = loop
        await asyncio.sleep(0.001)
        return "result"

    assert ringloop.run(main()) == "result"
    assert isinstance(seen["loop"], ringloop.Loop)
    assert seen["loop"].is_closed()


def test_run_propagates_exceptions_and_debug(ringloop):
    async def main():
        assert asyncio.get_running_loop().get_debug()
        raise LookupError("from main")

    with pytest.raises(LookupError):
        ringloop.run(main(), debug=True)


def test_run_refuses_a_running_loop(ringloop):
    async def outer():
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            ringloop.run(coro)
        coro.close()

    ringloop.run(outer())


def test_install_and_event_loop_policy(ringloop):
    code = """
        import asyncio, sys, warnings
        import ringloop
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ringloop.install()
        deprecated = any(issubclass(w.category, DeprecationWarning) for w in caught)
        print("deprecation-warning" if deprecated else "no-warning")
        loop = asyncio.new_event_loop()
        print(type(loop).__name__, isinstance(loop, ringloop.Loop))
        loop.close()
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(asyncio.run(main()))
        asyncio.set_event_loop_policy(ringloop.EventLoopPolicy())
        print(isinstance(asyncio.get_event_loop_policy(), asyncio.AbstractEventLoopPolicy))
    """
    lines = run_python(code).splitlines()
    # uvloop's convention: install() is deprecated from Python 3.12 in favour of run().
    assert lines[0] == ("deprecation-warning" if sys.version_info >= (3, 12) else "no-warning")
    assert lines[1] == "Loop True"
    assert lines[2] == "Loop"
    assert lines[3] == "True"


def test_event_loop_policy_gives_new_loops_per_call(ringloop):
    policy = ringloop.EventLoopPolicy()
    first, second = policy.new_event_loop(), policy.new_event_loop()
    try:
        assert first is not second
        assert isinstance(first, ringloop.Loop) and isinstance(second, ringloop.Loop)
    finally:
        first.close()
        second.close()


def test_loops_are_independent_and_can_be_created_many_times(ringloop):
    from support import open_fds

    before = open_fds()
    for i in range(50):
        loop = ringloop.Loop(backend=("io_uring", "epoll")[i % 2])
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert open_fds() == before


def test_a_loop_refuses_to_run_in_a_forked_child(ringloop):
    code = """
        import asyncio, os, ringloop
        loop = ringloop.new_event_loop()
        pid = os.fork()
        if pid == 0:
            try:
                loop.run_until_complete(asyncio.sleep(0))
                os._exit(0)
            except RuntimeError:
                os._exit(42)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    """
    assert run_python(code) == "42"


def _other_interpreters():
    """CPython interpreters other than this one, found on PATH or under pyenv (3.11 and newer)."""
    import glob
    import shutil

    found = {}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(11, 16)]
    candidates += glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[1-5]*/bin/python3"))
    for path in filter(None, candidates):
        try:
            version = subprocess.run(
                [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if version and version != "%d.%d" % sys.version_info[:2]:
            found.setdefault(version, path)
    return sorted(found.items())


@pytest.mark.parametrize("version,interpreter", _other_interpreters() or [pytest.param(None, None, marks=pytest.mark.skip(reason="no other CPython >= 3.11 installed"))])
def test_install_run_and_policy_on_other_python_versions(ringloop, tmp_path, version, interpreter):
    # The package is pure Python plus a C library loaded by ctypes: the same installed files serve
    # every CPython version. Expose only the ringloop package to the other interpreter.
    package_dir = os.path.dirname(ringloop.__file__)
    os.symlink(package_dir, tmp_path / "ringloop")
    code = textwrap.dedent("""
        import asyncio, sys, warnings
        import ringloop
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(ringloop.run(main()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ringloop.install()
            loop = asyncio.new_event_loop()
        print(type(loop).__name__)
        loop.close()
        print(any(issubclass(w.category, DeprecationWarning) for w in caught))
    """)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    environment["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run([interpreter, "-c", code], capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr
    run_loop, policy_loop, deprecated = result.stdout.split()
    assert run_loop == "Loop" and policy_loop == "Loop"
    major, minor = map(int, version.split("."))
    # install() (and from 3.14 the policy API itself) is deprecated from 3.12, as uvloop's is.
    assert deprecated == str((major, minor) >= (3, 12))


def test_a_poll_after_the_c_loop_is_freed_is_a_clear_error(loop_factory):
    # The loop's per-iteration poll passes a prebuilt handle object; freeing the C loop must turn
    # that into RL_EHANDLE (a RuntimeError), never a call on freed memory.
    if not loop_factory.is_ringloop:
        pytest.skip("ringloop-only behaviour")
    loop = loop_factory()
    selector, reactor = loop._selector, loop._reactor
    assert selector.select(0) == 0
    loop.close()
    assert reactor.closed
    with pytest.raises(RuntimeError, match="handle is not valid"):
        selector.select(0)
    with pytest.raises(RuntimeError, match="handle is not valid"):
        selector.select(0.001)
    with pytest.raises(RuntimeError, match="handle is not valid"):
        selector.select(None)  # would wait forever on a live loop with nothing to do
    reactor.wake()  # nothing to wake: ignored


def _run_in_thread(loop, coro):
    result = {}

    def target():
        try:
            result["value"] = loop.run_until_complete(coro)
        except BaseException as exc:  # handed to the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def _ping():
    await asyncio.sleep(0)
    return "pong"


def test_io_uring_loop_runs_only_on_the_thread_it_first_ran_on(ringloop):
    try:
        loop = ringloop.Loop(backend="io_uring")
    except OSError as exc:
        pytest.skip(f"io_uring unavailable: {exc}")
    try:
        assert _run_in_thread(loop, _ping()) == "pong"
        coro = _ping()
        with pytest.raises(RuntimeError, match="bound to thread"):
            _run_in_thread(loop, coro)
        coro.close()
        coro = _ping()
        with pytest.raises(RuntimeError, match="single_thread=False"):
            loop.run_until_complete(coro)
        coro.close()
        with pytest.raises(RuntimeError, match="bound to thread"):
            loop.run_forever()
    finally:
        loop.close()


def test_single_thread_false_loop_runs_on_several_threads_in_turn(ringloop):
    for backend in ("io_uring", "epoll"):
        try:
            loop = ringloop.new_event_loop(backend=backend, single_thread=False)
        except OSError as exc:
            pytest.skip(f"{backend} unavailable: {exc}")
        try:
            assert _run_in_thread(loop, _ping()) == "pong"
            assert loop.run_until_complete(_ping()) == "pong"
            assert _run_in_thread(loop, _ping()) == "pong"
        finally:
            loop.close()


def test_epoll_loop_runs_on_any_thread_whatever_single_thread_says(ringloop):
    loop = ringloop.Loop(backend="epoll", single_thread=True)
    try:
        assert _run_in_thread(loop, _ping()) == "pong"
        assert loop.run_until_complete(_ping()) == "pong"
    finally:
        loop.close()


def test_ringloop_single_thread_environment_variable_sets_the_default(ringloop):
    code = """
        import asyncio, threading, ringloop
        loop = ringloop.Loop(backend="io_uring")
        async def ping():
            return "pong"
        thread = threading.Thread(target=lambda: loop.run_until_complete(ping()))
        thread.start(); thread.join()
        print(loop.run_until_complete(ping())); loop.close()
    """
    try:
        ringloop.Loop(backend="io_uring").close()
    except OSError as exc:
        pytest.skip(f"io_uring unavailable: {exc}")
    assert run_python(code, RINGLOOP_SINGLE_THREAD="0") == "pong"


def test_read_pipes_take_a_receive_op_on_io_uring_only(loop_factory):
    if not loop_factory.is_ringloop:
        pytest.skip("ringloop-only behaviour")
    loop = loop_factory()
    try:
        async def main():
            r, w = os.pipe()
            transport, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb", 0))
            mode = transport._completion
            transport.close()
            os.close(w)
            await asyncio.sleep(0)
            return mode

        assert loop.run_until_complete(main()) == (loop_factory.backend == "io_uring")
    finally:
        loop.close()


def test_read_pipe_falls_back_to_readiness_when_the_kernel_cannot_receive(loop_factory, monkeypatch):
    # io_uring before Linux 6.7 answers a receive on a pipe with ENOTSOCK. A pty gets the same
    # answer from every kernel, so it stands in for such a pipe here.
    import pty

    from ringloop._transport import RingReadPipeTransport

    if loop_factory.backend != "io_uring":
        pytest.skip("the io_uring backend's fallback")
    monkeypatch.setattr(RingReadPipeTransport, "_choose_mode", lambda self: setattr(self, "_completion", True))
    loop = loop_factory()
    master, slave = pty.openpty()
    try:
        class Collector(asyncio.Protocol):
            received = b""

            def data_received(self, data):
                self.received += data

        async def main():
            transport, collector = await loop.connect_read_pipe(Collector, os.fdopen(master, "rb", 0))
            os.write(slave, b"typed\n")
            while b"typed" not in collector.received:
                await asyncio.sleep(0.001)
            assert transport._completion is False
            transport.close()
            await asyncio.sleep(0)

        loop.run_until_complete(asyncio.wait_for(main(), 30))
        assert loop._recv_pipes is False  # the loop's next pipes go straight to readiness
    finally:
        os.close(slave)
        loop.close()


def test_udp_transports_take_a_datagram_receive_on_io_uring_only(loop_factory):
    if not loop_factory.is_ringloop:
        pytest.skip("ringloop-only behaviour")
    loop = loop_factory()
    try:
        async def main():
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            await asyncio.sleep(0)
            mode = transport._completion
            transport.close()
            await asyncio.sleep(0)
            return mode

        assert loop.run_until_complete(main()) == (loop_factory.backend == "io_uring")
    finally:
        loop.close()
