"""``ringloop.Loop``: asyncio's event loop on the ringloop reactor.

The loop is asyncio's own Unix selector loop (so every ``AbstractEventLoop`` method behaves as the
standard library's: UDP, pipes, subprocesses, signals, ``sock_*``, TLS, sendfile, servers) running
on a :class:`~ringloop._selector.RingSelector`, with the hot paths replaced:

* each iteration makes exactly one ``rl_poll`` (``RingSelector.select``), which returns readiness
  for asyncio's readers/writers and dispatches completion events by token;
* TCP/Unix stream transports receive through multishot ``rl_op_recv`` and send directly, handing
  only the remainder to the reactor (:mod:`ringloop._transport`);
* ``call_soon_threadsafe`` wakes the loop through ``rl_wake`` at most once per iteration.
"""

from __future__ import annotations

import itertools
import os
from asyncio import constants, sslproto, unix_events
from typing import Any, Callable, Dict, Optional

from ._lib import WAKE_TOKEN, Reactor
from ._selector import RingSelector
from ._transport import RingStreamTransport

__all__ = ["Loop"]


class Loop(unix_events._UnixSelectorEventLoop):  # type: ignore[name-defined,misc]
    """An asyncio event loop running on ringloop.

    ``backend`` is ``"io_uring"``, ``"epoll"``, ``"auto"`` or ``None`` (automatic choice, which the
    ``RINGLOOP_BACKEND`` environment variable may override); :attr:`backend` tells which one runs.
    """

    def __init__(self, *, backend: Optional[str] = None) -> None:
        # Everything __del__ and close() read must exist even if construction fails below.
        self._reactor: Optional[Reactor] = None
        self._wake_pending = False
        try:
            reactor = Reactor(backend)
        except BaseException:
            self._closed = True  # nothing to close: keeps BaseEventLoop.__del__ quiet
            raise
        self._reactor = reactor
        self._pid = os.getpid()
        self._handlers: Dict[int, Any] = {WAKE_TOKEN: self._on_wake}
        self._new_token: Callable[[], int] = itertools.count(1).__next__
        selector = RingSelector(reactor, self._handlers, self._new_token, self._dispatch_error)
        try:
            super().__init__(selector)
        except BaseException:
            self._closed = True
            selector.close()
            reactor.free()
            raise

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

    def run_forever(self) -> None:
        self._check_process()
        super().run_forever()

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

    # -- wakeups ----------------------------------------------------------------------------

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

    # -- transports ----------------------------------------------------------------------------

    def _make_socket_transport(
        self,
        sock: Any,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: Any = None,
        server: Any = None,
    ) -> RingStreamTransport:
        return RingStreamTransport(self, sock, protocol, waiter, extra, server)

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
        RingStreamTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

