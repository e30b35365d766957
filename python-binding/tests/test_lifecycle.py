"""Running, stopping and closing a loop; async generators; the default executor; warnings."""

import asyncio
import concurrent.futures
import gc
import logging
import os
import threading
import time
import warnings

import pytest

from support import open_fds, run


def test_run_until_complete_returns_the_coroutine_result(loop):
    async def answer():
        await asyncio.sleep(0.001)
        return 42

    assert loop.run_until_complete(answer()) == 42
    assert not loop.is_running()


def test_run_until_complete_raises_the_coroutine_exception(loop):
    async def fail():
        await asyncio.sleep(0)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        loop.run_until_complete(fail())


def test_run_until_complete_accepts_a_future_resolved_by_a_callback(loop):
    future = loop.create_future()
    loop.call_later(0.01, future.set_result, "done")
    assert loop.run_until_complete(future) == "done"


def test_run_until_complete_when_already_running_raises(loop):
    async def nested():
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            loop.run_until_complete(coro)
        coro.close()
        return "checked"

    assert run(loop, nested()) == "checked"


def test_run_forever_and_stop_can_be_repeated(loop):
    counter = []
    for round_number in range(3):
        loop.call_soon(counter.append, round_number)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert counter == [0, 1, 2]


def test_stop_before_run_forever_runs_one_iteration(loop):
    seen = []
    loop.call_soon(seen.append, 1)
    loop.stop()
    loop.run_forever()
    assert seen == [1]


def test_is_running_reports_the_state(loop):
    states = []
    loop.call_soon(lambda: states.append(loop.is_running()))
    loop.call_soon(loop.stop)
    assert not loop.is_running()
    loop.run_forever()
    assert states == [True]
    assert not loop.is_running()


def test_get_running_loop_inside_callbacks_and_tasks(loop):
    async def which():
        return asyncio.get_running_loop()

    assert run(loop, which()) is loop
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [loop]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_close_is_idempotent_and_refuses_a_running_loop(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert len(errors) == 1 and not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()
    with pytest.raises(RuntimeError):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()


def test_running_a_second_loop_in_the_same_thread_is_refused(loop_factory):
    outer, inner = loop_factory(), loop_factory()
    try:
        async def nested():
            coro = asyncio.sleep(0)
            with pytest.raises(RuntimeError):
                inner.run_until_complete(coro)
            coro.close()
            return "refused"

        assert outer.run_until_complete(nested()) == "refused"
    finally:
        outer.close()
        inner.close()


def test_loops_in_different_threads_run_independently(loop_factory):
    results = {}

    def worker(index):
        loop = loop_factory()
        try:
            async def work():
                await asyncio.sleep(0.01)
                return index * 10

            results[index] = loop.run_until_complete(work())
        finally:
            loop.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: i * 10 for i in range(4)}


def test_loop_run_in_a_worker_thread_and_closed_by_the_creator_releases_everything(loop_factory):
    # A common shape: the main thread makes the loop, a worker thread runs it (here an echo
    # server with a live connection), the main thread stops it, joins the worker and closes it.
    before = open_fds()
    loop = loop_factory()
    echoed = {}
    started = threading.Event()

    async def echo(reader, writer):
        writer.write(await reader.readexactly(5))
        await writer.drain()

    async def serve():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        echoed["port"] = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", echoed["port"])
        writer.write(b"hello")
        echoed["data"] = await reader.readexactly(5)
        echoed["server"], echoed["writer"] = server, writer  # kept open across the close

    def worker():
        loop.run_until_complete(serve())
        # Set from inside run_forever, so that the stop below cannot land in the earlier run.
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    assert not thread.is_alive()
    assert echoed["data"] == b"hello"
    echoed["writer"].transport.abort()
    echoed["server"].close()
    loop.close()
    del echoed["server"], echoed["writer"]
    gc.collect()
    leaked = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in open_fds() - before}
    assert not leaked, leaked


def test_shutdown_asyncgens_finalizes_suspended_generators(loop):
    finalized = []

    async def numbers():
        try:
            for i in range(10):
                yield i
                await asyncio.sleep(0)
        finally:
            finalized.append("finally ran")

    async def take_two():
        gen = numbers()
        values = [await gen.__anext__(), await gen.__anext__()]
        take_two.gen = gen  # keep it alive and suspended
        return values

    assert run(loop, take_two()) == [0, 1]
    assert finalized == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert finalized == ["finally ran"]
    del take_two.gen


def test_run_in_executor_returns_results_and_exceptions(loop):
    def blocking(x):
        time.sleep(0.01)
        if x < 0:
            raise ValueError(x)
        return threading.get_ident(), x * 2

    async def main():
        ident, doubled = await loop.run_in_executor(None, blocking, 21)
        assert ident != threading.get_ident() and doubled == 42
        with pytest.raises(ValueError):
            await loop.run_in_executor(None, blocking, -1)
        results = await asyncio.gather(*(loop.run_in_executor(None, blocking, i) for i in range(20)))
        return [r[1] for r in results]

    assert run(loop, main()) == [i * 2 for i in range(20)]


def test_run_in_executor_with_a_custom_and_a_default_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="custom") as pool:
        async def main():
            return await loop.run_in_executor(pool, lambda: threading.current_thread().name)

        assert run(loop, main()).startswith("custom")

    default = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="default")
    loop.set_default_executor(default)

    async def on_default():
        return await loop.run_in_executor(None, lambda: threading.current_thread().name)

    assert run(loop, on_default()).startswith("default")
    loop.run_until_complete(loop.shutdown_default_executor())


def test_shutdown_default_executor_joins_threads_and_refuses_new_work(loop):
    worker_threads = set()

    def work():
        worker_threads.add(threading.get_ident())
        time.sleep(0.01)

    async def main():
        await asyncio.gather(*(loop.run_in_executor(None, work) for _ in range(4)))
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError):
            await loop.run_in_executor(None, time.sleep, 0)

    run(loop, main())
    assert worker_threads
    alive = {thread.ident for thread in threading.enumerate()}
    assert not worker_threads & alive


def test_unclosed_loop_emits_a_resource_warning(loop_factory):
    loop = loop_factory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del loop
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught), [str(w.message) for w in caught]


def test_closed_loop_emits_no_resource_warning(loop_factory):
    loop = loop_factory()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del loop
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_debug_mode_warns_about_slow_callbacks(loop, caplog):
    loop.set_debug(True)
    assert loop.get_debug()
    loop.slow_callback_duration = 0.05
    loop.call_soon(time.sleep, 0.1)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    slow = [r for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert slow, [r.getMessage() for r in caplog.records]


def test_debug_mode_can_be_switched_off(loop, caplog):
    loop.set_debug(False)
    assert not loop.get_debug()
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.05)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert not [r for r in caplog.records if "took" in r.getMessage()]


def test_futures_and_tasks_follow_the_debug_flag(loop):
    # Futures and tasks ask get_debug() when they are made (in debug mode they keep a traceback of
    # their creation): the flag they see must follow set_debug().
    try:
        for enabled in (True, False, True):
            loop.set_debug(enabled)
            assert loop.get_debug() is enabled
            future = loop.create_future()
            task = loop.create_task(asyncio.sleep(0))
            assert (future._source_traceback is not None) is enabled
            assert (task._source_traceback is not None) is enabled
            loop.run_until_complete(task)
    finally:
        loop.set_debug(False)
