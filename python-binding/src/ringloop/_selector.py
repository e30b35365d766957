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
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ._lib import EVENT_SIZE, EVENT_STRUCT, READABLE, WRITABLE, Reactor

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

    ``handlers`` maps a token either to an ``int`` (a watch: ``fd << 1 | is_write``) or to a
    callable taking ``(result, flags, aux)``. A handler removed from the map drops any event for
    its token that the current ``poll`` already returned.
    """

    def __init__(
        self,
        reactor: Reactor,
        handlers: Dict[int, Any],
        new_token: Callable[[], int],
        on_error: Callable[[BaseException, Any], None],
        flush_cancels: bool = False,
    ) -> None:
        self._reactor = reactor
        self._handlers = handlers
        self._new_token = new_token
        self._on_error = on_error
        # io_uring keeps a cancelled poll (and its reference to the file) alive until the cancel
        # reaches the kernel: without a flush, a socket closed right after remove_reader() stays
        # open, and e.g. a closed listener answers connects with RST instead of refusing them.
        # A flush also recycles the receive buffers of the last poll, so the loop enables this
        # only where it uses no multishot receive.
        self._flush_cancels = flush_cancels
        self._fd_to_key: Dict[int, selectors.SelectorKey] = {}
        self._map = _KeyMapping(self)
        # fd -> [read (token, op) or None, write (token, op) or None]
        self._watches: Dict[int, List[Optional[Tuple[int, int]]]] = {}
        self._iter_unpack = EVENT_STRUCT.iter_unpack
        self._events = reactor.events
        self._completions: List[Tuple[int, int, int, int]] = []
        #: Counts polls: lets a handler tell whether two events came from the same poll.
        self.iteration = 0
        #: True while dispatch_completions() runs: events of the batch may still be queued.
        self.dispatching = False
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
        if self._flush_cancels:
            self._reactor.flush()
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
                if self._flush_cancels:
                    self._reactor.flush()
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

    def select(self, timeout: Optional[float] = None) -> List[Tuple[selectors.SelectorKey, int]]:
        """The iteration's one ``rl_poll``: returns readiness as ``(key, mask)`` pairs and queues
        completion events for :meth:`dispatch_completions`."""
        if timeout is None:
            timeout_ns = -1
        elif timeout <= 0:
            timeout_ns = 0
        else:
            # Round up: waking a little early would only spin the loop once more.
            timeout_ns = math.ceil(timeout * 1e9)
        retired = self._retired
        if retired:
            # The batch these handlers were kept for has been dispatched.
            for token in retired:
                self._handlers.pop(token, None)
            retired.clear()
        reactor = self._reactor
        # Reactor.poll() inlined: this runs once per loop iteration.
        n = (reactor._poll_nowait if timeout_ns == 0 else reactor._poll)(
            reactor._handle, timeout_ns, reactor._event_addr, reactor.capacity
        )
        if n < 0:
            n = reactor.poll_failed(n)
        self.iteration += 1
        ready: List[Tuple[selectors.SelectorKey, int]] = []
        if not n:
            return ready
        completions = self._completions
        handlers = self._handlers
        fd_to_key = self._fd_to_key
        for event in self._iter_unpack(self._events[: n * EVENT_SIZE]):
            handler = handlers.get(event[0])
            if handler is None:
                continue  # a watch or op removed since (asyncio's removals take effect at once)
            if type(handler) is int:
                key = fd_to_key.get(handler >> 1)
                if key is not None:
                    ready.append((key, EVENT_WRITE if handler & 1 else EVENT_READ))
            else:
                completions.append(event)
        return ready

    def retire(self, token: int) -> None:
        """Unregisters ``token``'s handler once the current batch has been dispatched (for an op
        cancelled while events of that batch may still be queued for it)."""
        self._retired.append(token)

    def dispatch_completions(self) -> int:
        """Runs the handlers of the completion events the last :meth:`select` returned; returns
        how many events there were.

        The handler is looked up again at dispatch time: one removed by an earlier handler of the
        same batch (a transport closed meanwhile) no longer receives events. Received buffers stay
        valid until the next ``select``.
        """
        completions = self._completions
        count = len(completions)
        if not count:
            return 0
        handlers = self._handlers
        self.dispatching = True
        try:
            for token, result, flags, aux in completions:
                handler = handlers.get(token)
                if handler is None:
                    continue
                try:
                    handler(result, flags, aux)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._on_error(exc, handler)
        finally:
            self.dispatching = False
            completions.clear()
            handler = None  # noqa: F841 (a surviving frame object must not keep it alive)
        return count
