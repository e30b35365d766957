"""A ``selectors.BaseSelector`` over ringloop readiness watches, and the per-iteration dispatch.

asyncio's selector machinery (add_reader/add_writer, sock_* fallbacks, UDP, pipes, subprocess,
signals through the self-pipe) runs unchanged on top of it: every registered direction is one
persistent level-triggered ``rl_op_watch``. ``select()`` is the loop's single ``rl_poll`` per
iteration; besides readiness it collects completion events (stream receives, sends, the wake),
which the loop then dispatches to the handlers registered by token: one foreign call serves both
models.
"""

from __future__ import annotations

import math
import selectors
from asyncio import events as _events
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ._lib import EV_MORE, EVENT_SIZE, EVENT_STRUCT, READABLE, WRITABLE, Reactor
from ._transport import RECEIVING_DATA, RingStreamTransport, _report_callback_error


#: Up to this many events a poll's records are read through a view made in advance.
_PRESLICED = 64

_Handle = _events.Handle

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

#: A completion handler: called with (result, flags, aux) of each event carrying its token.
Handler = Callable[[int, int, int], Any]


def _fileobj_to_fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class _KeyMapping(Mapping):
    """Read-only fd -> key view that, like the stdlib selectors' mapping, also accepts file
    objects: Python 3.13's loop looks readers up with ``get_map().get(sock)``."""

    __slots__ = ("_selector",)

    def __init__(self, selector: "RingSelector") -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._fd_to_key)

    def __iter__(self) -> Any:
        return iter(self._selector._fd_to_key)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._selector._fd_to_key[self._selector._lookup(fileobj)]


class RingSelector(selectors.BaseSelector):
    """Readiness through ringloop watches; completion events go to ``handlers[token]``.

    ``handlers`` maps a token to an ``int`` (a watch: ``fd << 1 | is_write``), to a
    :class:`RingStreamTransport` (its multishot receive), or to a callable taking
    ``(result, flags, aux)``. A handler removed from the map drops any event for
    its token that the current ``poll`` already returned.
    """

    def __init__(
        self,
        reactor: Reactor,
        handlers: Dict[int, Any],
        new_token: Callable[[], int],
        on_error: Callable[[BaseException, Any], None],
        remove_reader: Callable[[Any], Any],
        remove_writer: Callable[[Any], Any],
    ) -> None:
        self._reactor = reactor
        self._handlers = handlers
        self._new_token = new_token
        self._on_error = on_error
        self._fd_to_key: Dict[int, selectors.SelectorKey] = {}
        self._map = _KeyMapping(self)
        # fd -> [read (token, op) or None, write (token, op) or None]
        self._watches: Dict[int, List[Optional[Tuple[int, int]]]] = {}
        self._iter_unpack = EVENT_STRUCT.iter_unpack
        self._events = reactor.events
        # The event array's first n records as a view, made once for small n: slicing the
        # array anew on every poll costs ~50 ns.
        self._event_views = [self._events[: n * EVENT_SIZE] for n in range(_PRESLICED + 1)]
        self._buffer_bytes = reactor.buffer_bytes
        self._buffer_size = reactor.buffer_size
        self._buffers = reactor.buffers
        self._poll_wait = reactor.poll_wait
        self._poll_nowait = reactor.poll_nowait
        # The events of the last poll not yet delivered (an iterator over the event array).
        self._pending: Optional[Any] = None
        self._pending_count = 0
        # The loop's remove_reader/remove_writer, for a readiness event whose handle was cancelled.
        self._remove_reader = remove_reader
        self._remove_writer = remove_writer
        #: Counts polls: lets a handler tell whether two events came from the same poll.
        self.iteration = 0
        self._retired: List[int] = []
        self._closed = False

    # -- registration ---------------------------------------------------------------------------

    def _arm(self, fd: int, is_write: int) -> Tuple[int, int]:
        token = self._new_token()
        op = self._reactor.watch(fd, WRITABLE if is_write else READABLE, token)
        self._handlers[token] = fd << 1 | is_write
        return token, op

    def _disarm(self, armed: Optional[Tuple[int, int]]) -> None:
        if armed is None:
            return
        token, op = armed
        self._handlers.pop(token, None)
        self._reactor.cancel(op)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if self._closed:
            raise RuntimeError("selector is closed")
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fileobj_to_fd(fileobj)
        if fd in self._fd_to_key:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        slots: List[Optional[Tuple[int, int]]] = [None, None]
        try:
            if events & EVENT_READ:
                slots[0] = self._arm(fd, 0)
            if events & EVENT_WRITE:
                slots[1] = self._arm(fd, 1)
        except BaseException:
            self._disarm(slots[0])
            raise
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._fd_to_key[fd] = key
        self._watches[fd] = slots
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._lookup(fileobj)
        key = self._fd_to_key.pop(fd, None)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        read, write = self._watches.pop(fd)
        self._disarm(read)
        self._disarm(write)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = self._lookup(fileobj)
        key = self._fd_to_key.get(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        slots = self._watches[fd]
        for index, bit in ((0, EVENT_READ), (1, EVENT_WRITE)):
            wanted = bool(events & bit)
            if wanted and slots[index] is None:
                slots[index] = self._arm(fd, index)
            elif not wanted and slots[index] is not None:
                armed, slots[index] = slots[index], None
                self._disarm(armed)
        key = selectors.SelectorKey(key.fileobj, fd, events, data)
        self._fd_to_key[fd] = key
        return key

    def _lookup(self, fileobj: Any) -> int:
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            # A closed file object: find it by identity, as the stdlib selectors do.
            for key in self._fd_to_key.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._fd_to_key[self._lookup(fileobj)]
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for read, write in self._watches.values():
            for armed in (read, write):
                if armed is not None:
                    self._handlers.pop(armed[0], None)
                    try:
                        self._reactor.cancel(armed[1])
                    except (OSError, RuntimeError):
                        pass
        self._watches.clear()
        self._fd_to_key.clear()

    # -- the one foreign call per iteration ---------------------------------------------------

    def select(self, timeout: Optional[float] = None) -> int:
        """The iteration's one ``rl_poll``; returns how many events it brought, which
        :meth:`dispatch` then delivers. A batch left unfinished (a callback raised
        ``KeyboardInterrupt`` or ``SystemExit`` mid-batch) is finished first: no poll happens,
        and so no receive buffer of that batch is recycled, until every event was delivered."""
        if self._pending is not None:
            return self._pending_count
        retired = self._retired
        if retired:
            # The batch these handlers were kept for has been dispatched.
            for token in retired:
                self._handlers.pop(token, None)
            retired.clear()
        # With arguments built once where they do not change: this runs once per loop iteration.
        # (Read from the reactor each time: freeing it replaces them with a NULL loop.)
        if timeout is None:
            n = self._poll_wait(*self._reactor.poll_forever_args)
        elif timeout <= 0:
            n = self._poll_nowait(*self._reactor.poll_nowait_args)
        else:
            # Round up: waking a little early would only spin the loop once more.
            n = self._poll_wait(*self._reactor.poll_args(math.ceil(timeout * 1e9)))
        if n < 0:
            n = self._reactor.poll_failed(n)
        self.iteration += 1
        if n:
            self._pending = self._iter_unpack(
                self._event_views[n] if n <= _PRESLICED else self._events[: n * EVENT_SIZE]
            )
            self._pending_count = n
        return n

    @property
    def batch_pending(self) -> bool:
        """Events of the last poll are not all delivered yet: from :meth:`select` until
        :meth:`dispatch` has delivered the last one (callbacks that were ready before the poll
        run in between). An op cancelled meanwhile may still have events in the batch, and
        a receive's events carry bytes that are already out of the socket."""
        return self._pending is not None

    def retire(self, token: int) -> None:
        """Unregisters ``token``'s handler once the current batch has been dispatched (for an op
        cancelled while events of that batch may still be queued for it)."""
        self._retired.append(token)

    def dispatch(self, run_ready: Optional[Callable[[Any], None]] = None) -> None:
        """Delivers the events of the last :meth:`select`, in order, in one pass: a completion
        event goes to its handler, ``handler(result, flags, aux)``; a readiness event's reader or
        writer handle runs as asyncio's selector loop runs I/O callbacks: through ``run_ready``
        when given (debug mode times it), else here, as ``Handle._run()`` would run it.

        The handler is looked up at delivery time: one removed by an earlier callback of the same
        batch (a transport closed meanwhile) no longer receives events. Received buffers stay
        valid until the next ``select``. An exception from a handler goes to ``on_error`` and the
        batch goes on; ``KeyboardInterrupt``/``SystemExit`` propagate and the rest of the batch
        is delivered on the next call.
        """
        events = self._pending
        if events is None:
            return
        handlers = self._handlers
        iteration = self.iteration
        buffer_bytes = self._buffer_bytes
        buffer_size = self._buffer_size
        buffers = self._buffers
        receiving_data = RECEIVING_DATA
        transport_type = RingStreamTransport
        fd_to_key = self._fd_to_key
        handler: Any = None
        # The readiness handle being run here, for its exception's report.
        handle: Any = None
        try:
            while True:
                try:
                    for token, result, flags, aux in events:
                        handler = handlers.get(token)
                        if handler is None:
                            continue  # removed since (asyncio's removals take effect at once)
                        if type(handler) is transport_type:
                            receiving = handler._receiving
                            # (In the transport's context, as its protocol callbacks run.)
                            if receiving and result > 0 and flags & EV_MORE:
                                # The stream transports' steady state, inline: bytes straight
                                # from the receive buffer to data_received(), or copied into
                                # a BufferedProtocol's buffer.
                                handler._data_iteration = iteration
                                start = aux * buffer_size
                                if receiving == receiving_data:
                                    handler._context.run(
                                        handler._protocol.data_received,
                                        buffer_bytes[start : start + result],
                                    )
                                else:
                                    handler._context.run(
                                        handler._deliver_buffered, buffers[start : start + result]
                                    )
                            else:
                                handler._context.run(handler._on_recv, result, flags, aux)
                        elif type(handler) is int:
                            # What BaseSelectorEventLoop._process_events and then Handle._run()
                            # do for one (key, mask) pair, spelled out (three Python frames
                            # less per readiness event), except that the handle runs now
                            # instead of being queued for later in this iteration.
                            key = fd_to_key.get(handler >> 1)
                            if key is None:
                                continue
                            handle = key.data[handler & 1]
                            if handle is None:
                                continue
                            if handle._cancelled:
                                handle = None
                                if handler & 1:
                                    self._remove_writer(key.fileobj)
                                else:
                                    self._remove_reader(key.fileobj)
                                continue
                            if run_ready is not None:
                                run_ready(handle)
                            elif type(handle) is not _Handle:
                                handle._run()  # another Handle type: its own _run()
                            elif handle._args:
                                handle._context.run(handle._callback, *handle._args)
                            else:
                                handle._context.run(handle._callback)
                            handle = None
                        else:
                            handler(result, flags, aux)
                    break
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    if type(handler) is transport_type:
                        # What the transport does with any failure of its protocol.
                        handler._fatal_error(
                            exc, "Fatal error: protocol.data_received() call failed."
                        )
                    elif handle is not None:
                        _report_callback_error(handle, exc)  # as Handle._run() reports it
                    else:
                        self._on_error(exc, handler)
                    handler = handle = None
            self._pending = None
            self._pending_count = 0
        finally:
            handler = handle = None  # a surviving frame object must not keep them alive
