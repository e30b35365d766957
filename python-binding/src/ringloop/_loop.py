"""``ringloop.Loop``: asyncio's event loop on the ringloop reactor.

The loop is asyncio's own Unix selector loop (so every ``AbstractEventLoop`` method behaves as the
standard library's: UDP, pipes, subprocesses, signals, ``sock_*``, TLS, sendfile, servers) running
on a :class:`~ringloop._selector.RingSelector`, with the hot paths replaced:

* each iteration makes exactly one ``rl_poll`` (``RingSelector.select``), which returns readiness
  for asyncio's readers/writers and the completion events the loop dispatches by token in its
  I/O phase (:meth:`Loop._run_once`);
* TCP/Unix stream transports (:mod:`ringloop._transport`) receive through a multishot
  ``rl_op_recv`` into the reactor's buffers (a ``BufferedProtocol``'s: into its own buffer, on
  readiness, as asyncio's), and send directly, handing only the remainder to the reactor;
* ``call_soon_threadsafe`` wakes the loop through ``rl_wake`` at most once per iteration;
* connection set-up takes fewer steps: ``sock_connect`` waits with a watch of its own,
  ``create_connection`` to an IP address skips resolution, and an accepted plain connection gets
  its transport in the accept callback instead of a task.
"""

from __future__ import annotations

import contextvars
import errno
import heapq
import itertools
import os
import socket
import threading
import time
import weakref
from asyncio import (
    base_events,
    constants,
    events,
    exceptions,
    selector_events,
    sslproto,
    trsock,
    unix_events,
)
from asyncio.base_events import _format_handle  # type: ignore[attr-defined]
from typing import Any, Callable, Dict, Optional, Set, Tuple

from ._lib import WAKE_TOKEN, WRITABLE, Reactor
from ._selector import RingSelector
from ._transport import (
    MAX_READ_SIZE,
    RingDatagramTransport,
    RingReadPipeTransport,
    RingStreamTransport,
    _report_callback_error,
    _sock_family,
    _sock_proto,
    _sock_type,
    overrides_socket_io,
)

__all__ = ["Loop"]


_NEG_ECANCELED = -errno.ECANCELED
_socket_type = socket.socket
_raw_accept = socket.socket._accept  # type: ignore[attr-defined]
_ipaddr_info = base_events._ipaddr_info  # type: ignore[attr-defined]
_HAS_IPv6 = base_events._HAS_IPv6  # type: ignore[attr-defined]
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)
_SOL_SOCKET = socket.SOL_SOCKET
_SO_ERROR = socket.SO_ERROR
_SOCK_STREAM = int(socket.SOCK_STREAM)
_Handle = events.Handle
_TimerHandle = events.TimerHandle
_new_object = object.__new__
_copy_context = contextvars.copy_context
_heappush = heapq.heappush
# call_soon() and friends fill a Handle's slots themselves instead of running Handle.__init__
# (a Python frame, and a get_debug() call, per callback): only where the slots are the ones that
# __init__ sets, which holds for every CPython this package supports (3.11 to 3.13). The slot
# stores are written out in call_soon, call_soon_threadsafe and call_at alike, because a shared
# helper would put back the frame per call that this saves; this check guards all three.
_LEAN_HANDLES = set(_Handle.__slots__) == {
    "_callback",
    "_args",
    "_cancelled",
    "_loop",
    "_source_traceback",
    "_repr",
    "__weakref__",
    "_context",
} and set(_TimerHandle.__slots__) == {"_scheduled", "_when"}
# Newer CPython patch releases give call_soon_threadsafe() a Handle subclass whose cancel() is
# thread-safe: there, the stdlib builds the handle.
_THREADSAFE_HANDLES = hasattr(events, "_ThreadSafeHandle")



# BaseEventLoop's tuning of its timer heap and longest wait, kept identical.
_MIN_SCHEDULED_TIMER_HANDLES = base_events._MIN_SCHEDULED_TIMER_HANDLES
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION
_MAXIMUM_SELECT_TIMEOUT = base_events.MAXIMUM_SELECT_TIMEOUT

# Receive buffers: 128 KiB each, so that a large message reaches data_received() in few pieces
# (every piece costs a Python callback and usually a send: a 100 KiB echo costs ~32 us of server
# CPU per round trip with 64 KiB buffers, ~27 us with 128 KiB ones; 1 KiB echoes do not notice).
# 64 of them: the io_uring ring hands buffers out in turn, so every buffer of the pool is written
# once per cycle and the bytes the pool keeps warm grow with their number. 10 KiB echoes over 100
# connections cost 7-9 % less server CPU with 64 buffers than with 128 (32 do as well, 16 starve
# receives at 1 KiB); a poll that finds the ring empty leaves the bytes in the socket until the
# next poll returns the buffers (no data is lost; 1,000 connections ran at least as fast, with a
# longer p99).
_RECV_BUFFER_SIZE = 128 * 1024
_RECV_BUFFER_COUNT = 64
# The epoll backend lends its free buffers last-in first-out, so only as many as one poll uses
# are ever warm and a larger pool costs address space, not cache. With 64, more ready
# connections than buffers starve: each starved receive drops and re-adds its read interest
# (two epoll_ctl calls; strace at 100 connections x 10 KiB: 1.1 per round trip, none with 256).
# 256 buffers: 100 connections x 1 KiB 4.8-5.0 -> 4.1-4.2 us of server CPU per round trip,
# x 10 KiB 6.65 -> 5.9-6.2, x 100 KiB 29-32 -> 28. (Measured when one epoll_wait took up to 256
# fds; it now takes at most 32, each receiving up to 4 buffers in one poll.)
_RECV_BUFFER_COUNT_EPOLL = 256


def _new_reactor(backend: Optional[str], single_thread: bool) -> Reactor:
    # The pool's size depends on the backend (see _RECV_BUFFER_COUNT_EPOLL); when the library
    # chose epoll itself (no io_uring here, or RINGLOOP_BACKEND), the reactor is made again.
    def make(backend: Optional[str]) -> Reactor:
        count = _RECV_BUFFER_COUNT_EPOLL if backend == "epoll" else _RECV_BUFFER_COUNT
        return Reactor(
            backend, buffer_size=_RECV_BUFFER_SIZE, buffer_count=count, single_thread=single_thread
        )

    if backend is None and os.environ.get("RINGLOOP_BACKEND") == "epoll":
        backend = "epoll"  # what the library would choose (and spares making it twice)
    reactor = make(backend)
    if reactor.backend == "epoll" and backend != "epoll":
        reactor.free()
        reactor = make("epoll")
    return reactor


class _RecvOp:
    """One receive op of ``sock_recv``/``sock_recv_into``: its completion handler (``complete``,
    registered under ``token``) and what the loop needs to hand late bytes on (it is the fd's
    entry in ``Loop._recv_latest`` while it is the latest). Slots instead of a closure and a
    tuple per call: the cells, the function object and the tuple cost more to build and free."""

    __slots__ = ("loop", "fut", "fd", "n", "target", "sock", "token", "op")

    loop: "Loop"
    fut: Any
    fd: int
    n: int
    target: Any
    sock: Any
    token: int
    op: int

    def complete(self, result: int, flags: int, aux: int) -> None:
        loop = self.loop
        fd = self.fd
        fut = self.fut
        del loop._handlers[self.token]
        latest = loop._recv_latest
        if latest.get(fd) is self:
            del latest[fd]
        if fut in loop._abandoned_futures:
            loop._settle_abandoned(fd, fut)
        if result > 0:
            target = self.target
            reactor = loop._reactor
            # (Not for sock_recv() of more than 64 KiB: a bytes object that large may cost
            # recv() an mmap, see RingDatagramTransport.)
            if result == self.n and (target is not None or result <= MAX_READ_SIZE):
                if fd not in loop._recv_abandoned:
                    loop._recv_filled.add(fd)
            start = aux * reactor.buffer_size
            if fut.done():
                # The caller gave up (or a later receive was given earlier bytes) after the
                # kernel took these bytes: they are the next ones in the stream.
                loop._keep_leftovers(self.sock, reactor.buffer_bytes[start : start + result])
                loop._hand_leftovers_to_latest(self.sock, fd)
            elif target is None:
                fut.set_result(reactor.buffer_bytes[start : start + result])
            else:
                target[:result] = reactor.buffers[start : start + result]
                fut.set_result(result)
        elif fut.done():
            return
        elif result == 0:
            fut.set_result(b"" if self.target is None else 0)
        elif result != _NEG_ECANCELED:
            fut.set_exception(OSError(-result, os.strerror(-result)))


class Loop(unix_events._UnixSelectorEventLoop):  # type: ignore[name-defined,misc]
    """An asyncio event loop running on ringloop.

    ``backend`` is ``"io_uring"``, ``"epoll"``, ``"auto"`` or ``None`` (automatic choice, which the
    ``RINGLOOP_BACKEND`` environment variable may override); :attr:`backend` tells which one runs.

    ``single_thread`` (default: true unless the ``RINGLOOP_SINGLE_THREAD`` environment variable is
    ``0``) lets the io_uring backend bind its ring to the first thread that runs the loop
    (``IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN``: the kernel's completion work runs in batches
    inside the loop's own wait instead of on every system call's return, which is cheaper per
    event). Such a loop can be created, closed and woken (``call_soon_threadsafe``) from any
    thread, but only ever run on that first thread: running it on another raises
    ``RuntimeError``. Pass ``single_thread=False`` for a loop that is run on several threads in
    turn. The epoll backend ignores it.
    """

    def __init__(
        self, *, backend: Optional[str] = None, single_thread: Optional[bool] = None
    ) -> None:
        # Everything __del__ and close() read must exist even if construction fails below.
        self._reactor: Optional[Reactor] = None
        self._wake_pending = False
        if single_thread is None:
            single_thread = os.environ.get("RINGLOOP_SINGLE_THREAD", "1") != "0"
        try:
            reactor = _new_reactor(backend, single_thread)
        except BaseException:
            self._closed = True  # nothing to close: keeps BaseEventLoop.__del__ quiet
            raise
        self._reactor = reactor
        self._pid = os.getpid()
        # A single-thread io_uring ring is bound to the first thread that runs the loop
        # (_check_ring_thread): _poll_thread is that thread's native id once it has run.
        self._bound = single_thread and reactor.backend == "io_uring"
        self._poll_thread: Optional[int] = None
        self._handlers: Dict[int, Any] = {WAKE_TOKEN: self._on_wake}
        self._new_token: Callable[[], int] = itertools.count(1).__next__
        # Readiness-mode transports recv() into this and copy out what arrived (one loop thread,
        # and every read is copied before the next one starts).
        self._recv_scratch = memoryview(bytearray(RingStreamTransport.max_size))
        # Read pipes take a receive op on io_uring, until the kernel says it cannot (before 6.7).
        # On epoll the library would read them just as os.read() does, into its own buffers,
        # from which data_received()'s bytes are a second copy: 64 KiB chunks cost 35 % more.
        self._recv_pipes = reactor.backend == "io_uring"
        # UDP sockets likewise take a datagram receive on io_uring (library 0.6 and later).
        self._recv_datagrams = reactor.backend == "io_uring" and reactor.has_recvmsg
        selector = RingSelector(
            reactor,
            self._handlers,
            self._new_token,
            self._dispatch_error,
            self._remove_reader,
            self._remove_writer,
        )
        try:
            super().__init__(selector)
        except BaseException:
            self._closed = True
            selector.close()
            reactor.free()
            raise
        self._bind_fast_methods()
        # The dict inside asyncio's fd -> transport weak map, for sock_recv*'s check that no
        # transport owns the socket: a miss in the weak map itself raises and catches a KeyError
        # inside (~0.4 us per receive); the full check runs when this dict knows the fd.
        transports = self._transports
        self._transport_refs: Optional[Dict[int, Any]] = (
            transports.data if type(transports) is weakref.WeakValueDictionary else None
        )
        # sock_recv/sock_recv_into as one completion op each (rl_op_recv_once) where the
        # library has it. Bytes that such a receive brought in after its caller was cancelled wait
        # here for the next sock_recv*/ on the same socket object (never on a socket that merely
        # reuses its fd number), so that none is lost. Keyed by a weak reference to the socket,
        # dropped with it; a plain dict, so that "no leftovers" is one C-level truth test.
        self._recv_once = reactor.has_recv_once
        self._sock_leftovers: Dict[Any, bytes] = {}
        # fds whose last receive filled its whole request: more bytes are probably waiting, so
        # the next sock_recv*() reads them at once, as asyncio's does (a small read from a full
        # socket then costs one recv() instead of an op and two loop iterations: ~1 us
        # against ~6 us). Never while a cancelled receive op on the fd has not brought its event:
        # bytes the kernel may have given it precede any that a recv() from here would get.
        self._recv_filled: Set[int] = set()
        # fd -> how many of its cancelled receive ops have not brought their event yet, and the
        # futures of those ops.
        self._recv_abandoned: Dict[int, int] = {}
        self._abandoned_futures: Set[Any] = set()
        # fd -> the receive op started last on it, until its event: where bytes that an
        # earlier, abandoned op brought afterwards go first (they precede whatever this op gets).
        self._recv_latest: Dict[int, _RecvOp] = {}

    @property
    def backend(self) -> str:
        """The kernel interface this loop runs on: ``"io_uring"`` or ``"epoll"``."""
        return self._reactor.backend if self._reactor is not None else "closed"

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} backend={self.backend} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # -- lifetime ---------------------------------------------------------------------------

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            raise RuntimeError(
                "this ringloop event loop was created in process "
                f"{self._pid} and cannot run in its forked child {os.getpid()}; "
                "create a new loop in the child"
            )

    def _check_ring_thread(self) -> None:
        if not self._bound or self.is_closed() or self.is_running():
            return  # (asyncio's own checks report the last two)
        thread = threading.get_native_id()
        if self._poll_thread is None:
            self._poll_thread = thread
        elif self._poll_thread != thread:
            raise RuntimeError(
                f"this ringloop event loop's io_uring ring is bound to thread {self._poll_thread}, "
                f"where it first ran, and cannot run in thread {thread}; create the loop with "
                "ringloop.Loop(single_thread=False) (or set RINGLOOP_SINGLE_THREAD=0) to run it "
                "on several threads"
            )

    def run_forever(self) -> None:
        self._check_process()
        self._check_ring_thread()
        super().run_forever()

    def run_until_complete(self, future: Any) -> Any:
        self._check_process()  # before a task is created for the coroutine
        self._check_ring_thread()
        return super().run_until_complete(future)

    def _bind_fast_methods(self) -> None:
        # time() runs a few times per iteration: bound on the instance as the C function it
        # returns, unless a subclass overrides it. (create_future bound as a partial would make
        # the loop a reference cycle: not done. get_debug is bound by set_debug.)
        if type(self).time is Loop.time:
            self.time = time.monotonic  # type: ignore[method-assign]

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        if type(self).get_debug is base_events.BaseEventLoop.get_debug:
            # Every Future and Task made on this loop asks get_debug() in its (C) __init__: bound
            # on the instance as a C callable that returns the flag, it costs no Python frame.
            # (repeat(flag).__next__ holds no reference to the loop, so no reference cycle.)
            self.get_debug = itertools.repeat(self._debug).__next__  # type: ignore[method-assign]

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        try:
            if self._pid == os.getpid():
                super().close()
            else:
                # A forked child: release this process's Python-side fds, never the parent's ring.
                self._close_in_child()
        finally:
            reactor = self._reactor
            if reactor is not None:
                reactor.free()
            # Nothing dispatches any more: let transports still registered here be collected
            # (their sockets close then), as the stdlib loop's selector map does on close.
            self._handlers.clear()

    def _close_in_child(self) -> None:
        self._closed = True
        for sock in (self._ssock, self._csock):
            if sock is not None:
                sock.close()
        self._ssock = self._csock = None
        self._selector = None
        self._ready.clear()
        self._scheduled.clear()
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    # -- one iteration ------------------------------------------------------------------------

    def _run_once(self) -> None:
        # asyncio's iteration (BaseEventLoop._run_once), with the completion events of the poll
        # dispatched where the selector loop runs its I/O callbacks: after the callbacks that
        # were already ready, before the expired timers, and anything they schedule runs on the
        # next iteration, exactly as for a reader callback of the stdlib loop.
        # (The timer steps are skipped whole when there is no timer: a test less per iteration.)
        scheduled = self._scheduled
        if not scheduled:
            pass
        elif (
            len(scheduled) > _MIN_SCHEDULED_TIMER_HANDLES
            and self._timer_cancelled_count / len(scheduled) > _MIN_CANCELLED_TIMER_HANDLES_FRACTION
        ):
            live = []
            for timer in scheduled:
                if timer._cancelled:
                    timer._scheduled = False
                else:
                    live.append(timer)
            heapq.heapify(live)
            self._scheduled = scheduled = live
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                heapq.heappop(scheduled)._scheduled = False

        ready = self._ready
        selector = self._selector
        if ready or self._stopping or selector._pending is not None:
            timeout: Optional[float] = 0
        elif scheduled:
            timeout = min(max(0.0, scheduled[0]._when - self.time()), _MAXIMUM_SELECT_TIMEOUT)
        else:
            timeout = None

        already_ready = len(ready)
        selector.select(timeout)

        if scheduled:
            end_time = self.time() + self._clock_resolution
            while scheduled and scheduled[0]._when < end_time:
                timer = heapq.heappop(scheduled)
                timer._scheduled = False
                ready.append(timer)
            timer = None

        # asyncio's order: the callbacks that were ready before the poll, then the I/O callbacks
        # (here the poll's events, dispatched in one pass: completion handlers and readiness
        # handles alike), then the expired timers. Whatever these schedule runs next iteration.
        ntodo = len(ready)
        if self._debug:
            self._run_debug(already_ready, ntodo)
            return
        # (Each step only when it has work: a call less per iteration is measurable with sleep(0).)
        if already_ready:
            self._run_ready(already_ready)
        if selector._pending is not None:
            selector.dispatch()
        if ntodo > already_ready:
            self._run_ready(ntodo - already_ready)

    def _run_ready(self, count: int) -> None:
        # The next `count` ready handles, with Handle._run() inlined for asyncio's own handle
        # types (one Python frame less per callback); any other handle type runs its own _run().
        popleft = self._ready.popleft
        for _ in range(count):
            handle = popleft()
            if handle._cancelled:
                continue
            if type(handle) is _Handle or type(handle) is _TimerHandle:
                # Calls with no or one argument (a task's step, a future's done callback) are
                # spelled out: `run(cb, *args)` builds a list and a tuple per call.
                args = handle._args
                try:
                    if not args:
                        handle._context.run(handle._callback)
                    elif len(args) == 1:
                        handle._context.run(handle._callback, args[0])
                    else:
                        handle._context.run(handle._callback, *args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    _report_callback_error(handle, exc)
            else:
                handle._run()
        handle = None  # breaks a reference cycle when a callback raised

    def _run_debug(self, already_ready: int, ntodo: int) -> None:
        # The same order as _run_once, timing callbacks for asyncio's slow-callback warning.
        ready = self._ready
        for _ in range(already_ready):
            self._run_timed(ready.popleft())
        t0 = self.time()
        self._selector.dispatch(self._run_timed)
        dt = self.time() - t0
        if dt >= self.slow_callback_duration:
            base_events.logger.warning("Executing I/O callbacks took %.3f seconds", dt)
        for _ in range(ntodo - already_ready):
            self._run_timed(ready.popleft())

    def _run_timed(self, handle: events.Handle) -> None:
        if handle._cancelled:
            return
        try:
            self._current_handle = handle
            t0 = self.time()
            handle._run()
            dt = self.time() - t0
            if dt >= self.slow_callback_duration:
                # Looked up at call time, like BaseEventLoop (tests patch base_events.logger).
                base_events.logger.warning(
                    "Executing %s took %.3f seconds", _format_handle(handle), dt
                )
        finally:
            self._current_handle = None
            # Debug mode captures stacks (sys._getframe), which can keep this call's frame object
            # alive: drop the handle so the frame does not keep the callback's objects (a failed
            # task waiting to report its exception when collected) alive too.
            handle = None  # noqa: F841

    # -- scheduling ---------------------------------------------------------------------------

    def call_soon(
        self, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> events.Handle:
        """asyncio's ``call_soon``; outside debug mode it builds the handle in place."""
        if self._debug or not _LEAN_HANDLES:
            handle = super().call_soon(callback, *args, context=context)
            if handle._source_traceback:
                del handle._source_traceback[-1]  # this frame: the caller's comes last
            return handle
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = _new_object(_Handle)
        handle._callback = callback
        handle._args = args
        handle._cancelled = False
        handle._loop = self
        handle._source_traceback = None
        handle._repr = None
        handle._context = _copy_context() if context is None else context
        self._ready.append(handle)
        return handle

    def call_at(
        self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> events.TimerHandle:
        """asyncio's ``call_at``; outside debug mode it builds the handle in place."""
        if self._debug or not _LEAN_HANDLES or when is None:
            timer = super().call_at(when, callback, *args, context=context)
            if timer._source_traceback:
                del timer._source_traceback[-1]  # this frame: the caller's comes last
            return timer
        if self._closed:
            raise RuntimeError("Event loop is closed")
        timer = _new_object(_TimerHandle)
        timer._callback = callback
        timer._args = args
        timer._cancelled = False
        timer._loop = self
        timer._source_traceback = None
        timer._repr = None
        timer._context = _copy_context() if context is None else context
        timer._when = when
        _heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer

    # -- wakeups ----------------------------------------------------------------------------

    def call_soon_threadsafe(
        self, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> events.Handle:
        """Like :meth:`call_soon`, from any thread; wakes the loop at most once per iteration."""
        if self._debug or not _LEAN_HANDLES or _THREADSAFE_HANDLES:
            handle = super().call_soon_threadsafe(callback, *args, context=context)
            if handle._source_traceback:
                del handle._source_traceback[-1]  # the stdlib's frame: this one stands for it
            return handle
        # call_soon()'s lean handle, built here: a thread calling this in a loop pays for every
        # Python frame while holding the GIL that the loop thread waits for.
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = _new_object(_Handle)
        handle._callback = callback
        handle._args = args
        handle._cancelled = False
        handle._loop = self
        handle._source_traceback = None
        handle._repr = None
        handle._context = _copy_context() if context is None else context
        self._ready.append(handle)
        if not self._wake_pending:
            self._write_to_self()
        return handle

    def _write_to_self(self) -> None:
        # call_soon_threadsafe() from any thread: one rl_wake per loop iteration at most. The flag
        # is cleared only when the loop has consumed the wake event, and the loop reads its ready
        # queue after that, so a callback appended while the flag was set is never stranded.
        if self._wake_pending:
            return
        self._wake_pending = True
        reactor = self._reactor
        if reactor is not None and self._pid == os.getpid():
            reactor.wake()

    def _on_wake(self, result: int, flags: int, aux: int) -> None:
        self._wake_pending = False

    def _dispatch_error(self, exc: BaseException, handler: Any) -> None:
        self.call_exception_handler(
            {
                "message": f"Exception in ringloop completion handler {handler!r}",
                "exception": exc,
            }
        )

    # -- completion-based socket receive ---------------------------------------------------------

    async def sock_recv(self, sock: Any, n: int) -> bytes:
        """asyncio's ``sock_recv``, as one receive op: no readiness round trip, and no
        ``recv()`` attempted first (the kernel completes the op as soon as bytes are there)
        unless the last receive on the socket filled its whole request."""
        fd = sock.fileno()
        if (
            fd in self._recv_filled
            and type(sock) is _socket_type
            and not self._sock_leftovers
            and not self._debug
            and self._transport_refs is not None
            and fd not in self._transport_refs
        ):
            # _start_recv's first case spelled out (_recv_now for bytes): the last receive
            # filled its request, so recv() at once, as asyncio does. This is the path of many
            # small reads from a full socket, where two Python frames were a third of the cost.
            try:
                data = sock.recv(n)
            except (BlockingIOError, InterruptedError):
                self._recv_filled.discard(fd)
            except BaseException:
                self._recv_filled.discard(fd)
                raise
            else:
                if len(data) < n:
                    self._recv_filled.discard(fd)
                return data  # type: ignore[no-any-return]
        if (
            not self._recv_once
            or n <= 0
            or fd < 0
            or (type(sock) is not _socket_type and overrides_socket_io(sock))
        ):
            return await super().sock_recv(sock, n)
        fut, op = self._start_recv(sock, fd, n, None)
        if not op:
            return fut  # type: ignore[no-any-return]  # the bytes themselves
        try:
            return await fut  # type: ignore[no-any-return]
        except exceptions.CancelledError:
            self._abandon_recv(sock, fd, fut, op, None)
            raise

    async def sock_recv_into(self, sock: Any, buf: Any) -> int:
        """asyncio's ``sock_recv_into``, as one receive op copied into ``buf``."""
        fd = sock.fileno()
        if (
            not self._recv_once
            or fd < 0
            or (type(sock) is not _socket_type and overrides_socket_io(sock))
        ):
            return await super().sock_recv_into(sock, buf)
        target = memoryview(buf).cast("B")
        if not target.nbytes:
            return await super().sock_recv_into(sock, buf)
        fut, op = self._start_recv(sock, fd, target.nbytes, target)
        if not op:
            return fut  # type: ignore[no-any-return]  # the byte count itself
        try:
            return await fut  # type: ignore[no-any-return]
        except exceptions.CancelledError:
            self._abandon_recv(sock, fd, fut, op, target)
            raise

    def _start_recv(self, sock: Any, fd: int, n: int, target: Any) -> Tuple[Any, int]:
        # One receive of at most n bytes (into target when given) on sock, whose fd is fd: its
        # future and its op, or, when the bytes were already here, the result itself (the bytes,
        # or the count copied into target) and op 0.
        if type(sock) is not _socket_type:
            base_events._check_ssl_socket(sock)  # (an SSLSocket is a subclass)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        transport_refs = self._transport_refs
        if transport_refs is None or fd in transport_refs:
            self._ensure_fd_no_transport(fd)
        if self._sock_leftovers:
            early = self._take_leftovers(sock, n)
            if early:
                if target is None:
                    return early, 0
                target[: len(early)] = early
                return len(early), 0
        if fd in self._recv_filled:
            result = self._recv_now(sock, fd, n, target)
            if result is not None:
                return result, 0
        fut = self.create_future()
        token = self._new_token()
        recv = _RecvOp()
        recv.loop = self
        recv.fut = fut
        recv.fd = fd
        recv.n = n
        recv.target = target
        recv.sock = sock
        recv.token = token
        handlers = self._handlers
        handlers[token] = recv.complete
        try:
            recv.op = self._reactor.recv_once(fd, n if n < 0xFFFFFFFF else 0xFFFFFFFF, token)
        except BaseException:
            del handlers[token]
            raise
        self._recv_latest[fd] = recv
        return fut, recv.op

    def _abandon_op(self, fd: int, fut: Any, op: int) -> None:
        # Cancels a receive op whose future is cancelled or already has its result; the op's
        # event still comes, to its handler, which keeps any bytes it brings for the next
        # receive on the socket.
        self._recv_abandoned[fd] = self._recv_abandoned.get(fd, 0) + 1
        self._abandoned_futures.add(fut)
        self._recv_filled.discard(fd)
        try:
            self._reactor.cancel(op)
        except (OSError, RuntimeError):
            pass

    def _settle_abandoned(self, fd: int, fut: Any) -> None:
        # An abandoned receive op on fd brought its (last) event.
        self._abandoned_futures.discard(fut)
        count = self._recv_abandoned[fd] - 1
        if count:
            self._recv_abandoned[fd] = count
        else:
            del self._recv_abandoned[fd]

    def _hand_leftovers_to_latest(self, sock: Any, fd: int) -> None:
        # Bytes just kept for sock came after their receiver gave up. A receive started on the
        # same socket since then is waiting for bytes that come after these: it gets these
        # instead (as many as it asked for), and its op is cancelled; what that op still brings
        # is kept behind them, in order.
        latest = self._recv_latest.get(fd)
        if latest is None:
            return
        fut = latest.fut
        target = latest.target
        if latest.sock is not sock or fut.done():
            return
        early = self._take_leftovers(sock, latest.n)
        if not early:
            return
        del self._recv_latest[fd]
        if target is None:
            fut.set_result(early)
        else:
            target[: len(early)] = early
            fut.set_result(len(early))
        self._abandon_op(fd, fut, latest.op)

    def _recv_now(self, sock: Any, fd: int, n: int, target: Any) -> Any:
        # One recv() from the socket (asyncio's first attempt): the bytes, or the count copied
        # into target; None when there were none yet (the caller then starts an op). Its errors
        # are the receive's, raised to the caller as asyncio's sock_recv raises them.
        try:
            if target is None:
                data = sock.recv(n)
                count = len(data)
            else:
                count = sock.recv_into(target)
        except (BlockingIOError, InterruptedError):
            self._recv_filled.discard(fd)
            return None
        except BaseException:
            self._recv_filled.discard(fd)
            raise
        if count < n:
            self._recv_filled.discard(fd)
        return data if target is None else count

    def _abandon_recv(self, sock: Any, fd: int, fut: Any, op: int, target: Any) -> None:
        # The caller was cancelled. If the bytes had already arrived (the future holds them and
        # only the task's wakeup was pending), they are kept for the next receive on the socket;
        # otherwise the op is cancelled, and its event still comes (cancelled, or with bytes if
        # the kernel was first) to its handler, which stays registered until then.
        if fut.done() and not fut.cancelled():
            if fut.exception() is not None:
                return
            result = fut.result()
            self._keep_leftovers(sock, result if target is None else bytes(target[:result]))
            self._hand_leftovers_to_latest(sock, fd)
            return
        if op:
            self._abandon_op(fd, fut, op)

    def _keep_leftovers(self, sock: Any, data: bytes) -> None:
        # Bytes received for sock whose receiver gave up: after any kept before, for the next
        # receive on sock.
        if data:
            leftovers = self._sock_leftovers
            key = weakref.ref(sock, lambda key: leftovers.pop(key, None))
            leftovers[key] = leftovers.get(key, b"") + data

    def _take_leftovers(self, sock: Any, n: int) -> bytes:
        # At most n of the bytes kept for sock (b"" when there are none); the rest stays.
        leftovers = self._sock_leftovers
        key = weakref.ref(sock)
        early = leftovers.pop(key, b"")
        if len(early) > n:
            self._keep_leftovers(sock, early[n:])
            early = early[:n]
        return early

    # -- connections ---------------------------------------------------------------------------

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, **kwargs: Any
    ) -> Tuple[Any, Any]:
        """asyncio's ``create_connection``. With nothing but a host that is an IP address and a
        port (what ``open_connection(host, port)`` passes), it takes a short path with the same
        steps: no address resolution, one socket, :meth:`sock_connect`, the transport."""
        if kwargs or type(host) is not str or type(port) is not int:
            return await super().create_connection(  # type: ignore[no-any-return]
                protocol_factory, host, port, **kwargs
            )
        info = _ipaddr_info(host, port, 0, _SOCK_STREAM, 0)
        if info is None:  # a name: getaddrinfo, and every address it returns in turn
            return await super().create_connection(  # type: ignore[no-any-return]
                protocol_factory, host, port
            )
        family, kind, proto, _, address = info
        sock = _socket_type(family, kind, proto)
        try:
            sock.setblocking(False)
            await self._sock_connect_resolved(sock, address)
        except BaseException:
            sock.close()
            raise
        # asyncio's _create_connection_transport for a plain socket.
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_socket_transport(sock, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self._debug:
            base_events.logger.debug(
                "%r connected to %s:%r: (%r, %r)", sock, host, port, transport, protocol
            )
        return transport, protocol

    async def sock_connect(self, sock: Any, address: Any) -> None:
        """asyncio's ``sock_connect``: ``connect()``, then, while the connection is in progress,
        a writability watch of its own instead of an ``add_writer()`` registration (no selector
        key, handle or done callback per connection)."""
        if type(sock) is not _socket_type:
            base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        family = _sock_family(sock)
        if family == _AF_INET or (_HAS_IPv6 and family == _AF_INET6):
            host, port = address[:2]
            info = _ipaddr_info(host, port, family, _sock_type(sock), _sock_proto(sock), *address[2:])
            if info is None:
                resolved = await self._ensure_resolved(
                    address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
                )
                info = resolved[0]
            address = info[4]
        await self._sock_connect_resolved(sock, address)

    async def _sock_connect_resolved(self, sock: Any, address: Any) -> None:
        fd = sock.fileno()
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        transport_refs = self._transport_refs
        if transport_refs is None or fd in transport_refs:
            self._ensure_fd_no_transport(fd)
        fut = self.create_future()
        handlers = self._handlers
        reactor = self._reactor
        token = self._new_token()
        op = 0

        def on_writable(result: int, flags: int, aux: int) -> None:
            # asyncio's _sock_connect_cb, for each readiness event of the watch.
            if fut.done():
                return  # the caller was cancelled: its finally clause ends the watch
            try:
                if result < 0:
                    raise OSError(-result, os.strerror(-result))
                err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
                if err != 0:
                    raise OSError(err, f"Connect call failed {address}")
            except (BlockingIOError, InterruptedError):
                return  # still connecting: the watch reports it again
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(None)

        handlers[token] = on_writable
        try:
            op = reactor.watch(fd, WRITABLE, token)
            await fut
        finally:
            # Also when cancelled: the watch ends here and the kernel goes on connecting, as
            # with asyncio's.
            if handlers.pop(token, None) is not None and op:
                try:
                    reactor.cancel(op)
                except (OSError, RuntimeError):
                    pass
            fut = None  # breaks the cycle through an exception's traceback

    def _accept_connection(
        self,
        protocol_factory: Callable[[], Any],
        sock: Any,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: Optional[float] = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: Optional[float] = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        # asyncio's accept loop for one readiness event of a listening socket. A plain (not TLS)
        # connection gets its protocol and transport right here, where asyncio starts a task
        # (_accept_connection2) that does the same on the next iteration and then only waits
        # for connection_made(): a task, its steps and a future less per connection.
        serving = (
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if sslcontext:
            super()._accept_connection(*serving)
            return
        family, kind, proto = _sock_family(sock), _sock_type(sock), _sock_proto(sock)
        for _ in range(backlog):
            try:
                fd, addr = _raw_accept(sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # the accept queue is empty
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise  # the loop reports it
                # asyncio's back-off: stop accepting for a while (Linux keeps the listening
                # socket readable meanwhile).
                self.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": trsock.TransportSocket(sock),
                    }
                )
                self._remove_reader(sock.fileno())
                self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving, *serving)
                return
            conn = _socket_type(family, kind, proto, fileno=fd)
            protocol = None
            try:
                conn.setblocking(False)
                if self._debug:
                    base_events.logger.debug(
                        "%r got a new connection from %r: %r", server, addr, conn
                    )
                protocol = protocol_factory()
                self._make_socket_transport(conn, protocol, extra={"peername": addr}, server=server)
            except (SystemExit, KeyboardInterrupt):
                conn.close()
                raise
            except BaseException as exc:
                # No transport owns the socket (making it is the last step that can fail).
                conn.close()  # (asyncio leaves it to the garbage collector)
                if self._debug:
                    context = {
                        "message": "Error on transport creation for incoming connection",
                        "exception": exc,
                    }
                    if protocol is not None:
                        context["protocol"] = protocol
                    self.call_exception_handler(context)

    # -- transports ----------------------------------------------------------------------------

    def _make_socket_transport(
        self,
        sock: Any,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: Any = None,
        server: Any = None,
    ) -> Any:
        if type(sock) is not _socket_type and overrides_socket_io(sock):
            # Its I/O goes through its own methods (see _transport's module doc).
            return selector_events._SelectorSocketTransport(  # type: ignore[attr-defined]
                self, sock, protocol, waiter, extra, server
            )
        return RingStreamTransport(self, sock, protocol, waiter, extra, server)

    def _make_datagram_transport(
        self, sock: Any, protocol: Any, address: Any = None, waiter: Any = None, extra: Any = None
    ) -> RingDatagramTransport:
        return RingDatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
    ) -> RingReadPipeTransport:
        return RingReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_ssl_transport(
        self,
        rawsock: Any,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: Optional[str] = None,
        extra: Any = None,
        server: Any = None,
        ssl_handshake_timeout: Optional[float] = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: Optional[float] = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

