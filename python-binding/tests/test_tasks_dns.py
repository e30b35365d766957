"""Tasks, task factories, futures, name resolution."""

import asyncio
import contextvars
import socket
import sys

import pytest

from support import run


def test_create_task_with_name_and_context(loop):
    var = contextvars.ContextVar("var", default="default")

    async def read_var():
        await asyncio.sleep(0)
        return var.get()

    async def main():
        task = loop.create_task(read_var(), name="named task")
        assert task.get_name() == "named task"
        assert await task == "default"
        if sys.version_info >= (3, 11):
            context = contextvars.copy_context()
            context.run(var.set, "from context")
            assert await loop.create_task(read_var(), context=context) == "from context"
        return asyncio.current_task().get_loop()

    assert run(loop, main()) is loop


def test_tasks_interleave_and_gather_in_order(loop):
    order = []

    async def worker(name, delays):
        for delay in delays:
            await asyncio.sleep(delay)
            order.append(name)
        return name

    async def main():
        return await asyncio.gather(worker("a", [0.01, 0.02]), worker("b", [0.02, 0.02]), worker("c", [0]))

    assert run(loop, main()) == ["a", "b", "c"]
    assert order == ["c", "a", "b", "a", "b"]


def test_task_cancellation_propagates_and_can_be_caught(loop):
    events = []

    async def victim():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    async def main():
        task = loop.create_task(victim())
        await asyncio.sleep(0.01)
        task.cancel("reason")
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.01)

    run(loop, main())
    assert events == ["cancelled", "finally"]


def test_set_task_factory_is_used_by_create_task(loop):
    created = []

    def factory(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def child():
        return "child"

    async def main():
        return await loop.create_task(child(), name="via factory")

    assert run(loop, main()) == "child"
    assert any(t.get_name() == "via factory" for t in created)
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    with pytest.raises(TypeError):
        loop.set_task_factory("not callable")


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12")
def test_eager_task_factory_starts_tasks_synchronously(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    steps = []

    async def eager():
        steps.append("started")
        await asyncio.sleep(0)
        steps.append("resumed")
        return 1

    async def main():
        task = loop.create_task(eager())
        assert steps == ["started"]
        return await task

    assert run(loop, main()) == 1
    assert steps == ["started", "resumed"]


def test_futures_resolved_from_callbacks_and_done_callbacks_run_on_the_loop(loop):
    async def main():
        future = loop.create_future()
        assert future.get_loop() is loop
        seen = []
        future.add_done_callback(lambda f: seen.append(f.result()))
        loop.call_later(0.01, future.set_result, "value")
        assert await future == "value"
        await asyncio.sleep(0)
        return seen

    assert run(loop, main()) == ["value"]


def test_getaddrinfo_localhost_and_numeric(loop):
    async def main():
        infos = await loop.getaddrinfo("localhost", 80, family=socket.AF_INET, type=socket.SOCK_STREAM)
        assert (socket.AF_INET, socket.SOCK_STREAM) in {(i[0], i[1]) for i in infos}
        assert ("127.0.0.1", 80) in {i[4] for i in infos}
        numeric = await loop.getaddrinfo("127.0.0.1", "8080", flags=socket.AI_NUMERICHOST, proto=socket.IPPROTO_UDP)
        assert {i[4] for i in numeric} == {("127.0.0.1", 8080)}
        assert await loop.getaddrinfo(None, 0, flags=socket.AI_PASSIVE, family=socket.AF_INET)
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("not-a-number.example", 80, flags=socket.AI_NUMERICHOST)

    run(loop, main())


def test_getnameinfo(loop):
    async def main():
        assert await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV) == (
            "127.0.0.1", "80",
        )
        host, service = await loop.getnameinfo(("127.0.0.1", 22))
        assert host and service

    run(loop, main())
