"""Scheduling callbacks: call_soon, call_later, call_at, cancellation, the clock, threads."""

import asyncio
import contextvars
import threading
import time

import pytest

from support import run


def test_call_soon_runs_callbacks_in_fifo_order(loop):
    order = []
    for i in range(200):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == list(range(200))


def test_call_soon_from_a_callback_runs_after_already_queued_callbacks(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(nested)

    def nested():
        order.append("nested")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.run_forever()
    assert order == ["first", "second", "nested"]


def test_call_soon_passes_arguments_and_returns_a_cancellable_handle(loop):
    seen = []
    handle = loop.call_soon(seen.append, "cancelled")
    loop.call_soon(lambda *args: seen.append(args), 1, "two", None)
    handle.cancel()
    assert handle.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [(1, "two", None)]


def test_callbacks_receive_exactly_their_arguments_however_many(loop):
    # The loop calls handles with no, one and several arguments by different paths.
    seen = []
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

    def record(*args):
        seen.append(args)

    def fail(arg):
        raise ValueError(arg)

    for args in [(), ("one",), ("one", 2), ("one", 2, None)]:
        loop.call_soon(record, *args)
        loop.call_later(0, record, "timer", *args)
    loop.call_soon(fail, "boom")
    loop.call_soon(record, "after the failure")
    thread = threading.Thread(target=lambda: loop.call_soon_threadsafe(record, "thread", 1))
    thread.start()
    thread.join()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    soon = [args for args in seen if args[:1] != ("timer",)]
    timers = [args for args in seen if args[:1] == ("timer",)]
    assert soon == [(), ("one",), ("one", 2), ("one", 2, None), ("after the failure",), ("thread", 1)]
    # Timers due at the same instant may run in either order.
    assert sorted(timers, key=len) == [("timer",), ("timer", "one"), ("timer", "one", 2),
                                       ("timer", "one", 2, None)]
    assert [str(exc) for exc in errors] == ["boom"]


def test_call_soon_threadsafe_on_a_closed_loop_raises(loop_factory):
    closed = loop_factory()
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.call_soon_threadsafe(lambda: None)


def test_call_soon_runs_callback_in_the_given_context(loop):
    var = contextvars.ContextVar("var", default="default")
    context = contextvars.copy_context()
    context.run(var.set, "in context")
    seen = []
    loop.call_soon(lambda: seen.append(var.get()), context=context)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in context", "default"]


def test_call_later_fires_in_deadline_order_and_not_early(loop):
    fired = []
    delays = [0.05, 0.01, 0.04, 0.0, 0.03, 0.02, 0.06]
    handles = {}
    for delay in delays:
        handles[delay] = loop.call_later(delay, lambda d=delay: fired.append((d, loop.time())))
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    # Deadline order (scheduling itself takes time, so that is when() order, not delay order).
    assert [d for d, _ in fired] == sorted(delays, key=lambda d: handles[d].when())
    for delay, fired_at in fired:
        # asyncio may run a timer up to one clock resolution early; nothing earlier.
        assert fired_at >= handles[delay].when() - 1e-3


def test_timers_that_are_all_due_at_once_run_in_deadline_order(loop):
    import random

    fired = []
    delays = [i / 1000 for i in range(1, 60)]
    random.Random(5).shuffle(delays)
    handles = [loop.call_later(delay, fired.append, delay) for delay in delays]
    deadline = {delay: handle.when() for delay, handle in zip(delays, handles)}
    # Block the loop past every deadline: the next iteration finds all of them due together.
    loop.call_soon(time.sleep, 0.1)
    loop.call_later(0.2, loop.stop)
    loop.run_forever()
    assert fired == sorted(delays, key=deadline.__getitem__)


def test_call_later_with_negative_delay_runs_like_call_soon(loop):
    seen = []
    loop.call_later(-1, seen.append, "late")
    loop.call_soon(seen.append, "soon")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(seen) == ["late", "soon"]


def test_call_at_uses_the_loop_clock(loop):
    seen = []
    when = loop.time() + 0.02
    handle = loop.call_at(when, lambda: seen.append(loop.time()))
    assert handle.when() == when
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert len(seen) == 1 and seen[0] >= when - 1e-3


def test_cancelled_timers_never_fire(loop):
    fired = []
    handles = [loop.call_later(0.01 * (i % 5), fired.append, i) for i in range(100)]
    for handle in handles[::2]:
        handle.cancel()
    handles[1].cancel()
    handles[1].cancel()  # cancelling twice is harmless
    loop.call_later(0.08, loop.stop)
    loop.run_forever()
    expected = [i for i in range(1, 100, 2) if i != 1]
    assert sorted(fired) == expected
    assert all(handles[i].cancelled() for i in range(0, 100, 2))


def test_timer_cancelled_by_an_earlier_timer_in_the_same_iteration_does_not_run(loop):
    fired = []
    later = loop.call_later(0.02, fired.append, "later")
    loop.call_later(0.01, later.cancel)
    time.sleep(0.03)  # both deadlines are due when the loop next looks
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert fired == []


def test_many_timers_all_fire_once(loop):
    fired = []
    for i in range(5000):
        loop.call_later((i % 50) / 1000, fired.append, i)
    loop.call_later(0.2, loop.stop)
    loop.run_forever()
    assert sorted(fired) == list(range(5000))


def test_loop_time_is_monotonic_and_advances(loop):
    samples = [loop.time() for _ in range(1000)]
    assert samples == sorted(samples)
    start = loop.time()
    run(loop, asyncio.sleep(0.05))
    assert loop.time() - start >= 0.05 - 1e-3
    # The loop clock is time.monotonic's clock (what asyncio.timeout() and wait_for compare to).
    assert abs(loop.time() - time.monotonic()) < 1.0


def test_call_soon_threadsafe_from_many_threads_runs_each_callback_exactly_once(loop):
    threads_count, per_thread = 4, 500
    total = threads_count * per_thread
    seen = []

    def record(item):
        seen.append(item)
        if len(seen) == total:
            loop.stop()

    def producer(thread_index):
        for i in range(per_thread):
            loop.call_soon_threadsafe(record, (thread_index, i))

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(threads_count)]
    loop.call_soon(lambda: [t.start() for t in threads])
    loop.run_forever()
    for thread in threads:
        thread.join()
    assert len(seen) == total
    assert set(seen) == {(t, i) for t in range(threads_count) for i in range(per_thread)}
    # Each producer's callbacks keep that producer's order.
    for t in range(threads_count):
        assert [i for (tt, i) in seen if tt == t] == list(range(per_thread))


def test_call_soon_threadsafe_wakes_a_loop_that_waits_without_timers(loop):
    def wake_later():
        time.sleep(0.1)
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=wake_later)
    thread.start()
    loop.run_forever()  # nothing else can wake it: pytest-timeout fails the test if it hangs
    thread.join()


def test_call_soon_threadsafe_wakes_a_loop_blocked_on_a_far_timer(loop):
    loop_is_running = threading.Event()

    def stop_from_thread():
        loop_is_running.wait()
        time.sleep(0.05)  # let the loop block on the one-hour timer
        loop.call_soon_threadsafe(loop.stop)

    loop.call_later(3600, lambda: None)
    loop.call_soon(loop_is_running.set)
    thread = threading.Thread(target=stop_from_thread)
    thread.start()
    loop.run_forever()  # pytest-timeout fails the test if the wake-up is lost
    thread.join()


def test_run_coroutine_threadsafe_returns_the_result_to_the_thread(loop):
    results = []

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    def worker():
        futures = [asyncio.run_coroutine_threadsafe(double(i), loop) for i in range(50)]
        results.extend(f.result(timeout=30) for f in futures)
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=worker)
    thread.start()
    loop.run_forever()
    thread.join()
    assert results == [2 * i for i in range(50)]


def test_scheduling_on_a_closed_loop_raises(loop):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError):
        loop.call_later(1, lambda: None)
    with pytest.raises(RuntimeError):
        loop.call_soon_threadsafe(lambda: None)


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "no-debug"])
def test_debug_mode_refuses_scheduling_from_another_thread_while_running(loop, debug):
    # asyncio's debug-mode check: call_soon/call_later/call_at from a thread other than the
    # running loop's raise instead of corrupting the loop's queues. Off without debug mode.
    loop.set_debug(debug)
    outcomes = {}

    def from_other_thread():
        for name, schedule in (
            ("call_soon", lambda: loop.call_soon(lambda: None)),
            ("call_later", lambda: loop.call_later(60, lambda: None)),
            ("call_at", lambda: loop.call_at(loop.time() + 60, lambda: None)),
        ):
            try:
                schedule()
            except RuntimeError as exc:
                outcomes[name] = str(exc)
            else:
                outcomes[name] = None

    async def scenario():
        thread = threading.Thread(target=from_other_thread)
        thread.start()
        # Blocks the loop (its thread id stays set) while the other thread tries.
        thread.join()

    run(loop, scenario())
    for timer in list(loop._scheduled):
        timer.cancel()
    if debug:
        assert set(outcomes) == {"call_soon", "call_later", "call_at"}
        for message in outcomes.values():
            assert message is not None and "other than the current one" in message
    else:
        assert outcomes == {"call_soon": None, "call_later": None, "call_at": None}
