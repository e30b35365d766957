"""The completion-based stream transport (TCP and Unix sockets).

A ``Protocol``'s transport reads with one multishot ``rl_op_recv`` into the reactor's buffers,
each event copied once, into the ``bytes`` given to ``data_received``. A ``BufferedProtocol``'s
transport reads as asyncio's does: a readiness watch, then ``recv_into`` the buffer that
``get_buffer`` returned just before, so its bytes are copied once too (from the completion
buffers they would be copied twice).

Writing tries a ``send`` on the socket's fd first; only what the kernel did not take is handed to
the reactor (``rl_op_send`` of a ``bytes`` object kept alive until its event), and writes made
while a send is in flight wait in a list until it completes. Flow control, EOF, close and abort
follow asyncio's ``_SelectorSocketTransport`` exactly.

Those paths use the fd, not the socket object's methods. A ``socket.socket`` subclass that
overrides its I/O methods (instrumentation, fault injection) gets asyncio's own transports
instead, whose I/O goes through those methods, as on the stdlib loop (see
:func:`overrides_socket_io`).

Every protocol callback runs in the context the transport was created in (a copy of it, taken
then), as with asyncio, whose transports get there through the contexts of the handles they
schedule, and uvloop: a context variable set before ``create_connection``/``create_server``
is seen in ``connection_made``, ``data_received``, ``eof_received`` and ``connection_lost``.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import os
import socket
import _socket
import stat
import warnings
import weakref
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from asyncio import (
    constants,
    events,
    format_helpers,
    futures,
    protocols,
    selector_events,
    transports,
    trsock,
    unix_events,
)
from asyncio.base_events import Server

from ._lib import DGRAM_NAME, DGRAM_PAYLOAD, EV_MORE, READABLE

logger = logging.getLogger("asyncio")

_ECANCELED = errno.ECANCELED
_ENOTSOCK = errno.ENOTSOCK
_copy_context = contextvars.copy_context
_partial = functools.partial
_os_write = os.write
# A socket's family/type/proto as plain ints: socket.socket's properties convert each to an enum
# member through a Python-level enum call (~0.5 us apiece, several per connection).
_sock_family = _socket.socket.family.__get__  # type: ignore[attr-defined]
_sock_type = _socket.socket.type.__get__  # type: ignore[attr-defined]
_sock_proto = _socket.socket.proto.__get__  # type: ignore[attr-defined]
_INET_FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)
_inet_ntop = socket.inet_ntop
_BYTEORDER = sys.byteorder
_NI_NUMERICHOST = socket.NI_NUMERICHOST
_SOCK_STREAM = int(socket.SOCK_STREAM)
_IPPROTO_TCP = socket.IPPROTO_TCP
_TCP_NODELAY = socket.TCP_NODELAY
# _FlowControlMixin's write buffer limits when none are given.
DEFAULT_HIGH_WATER = 64 * 1024
DEFAULT_LOW_WATER = DEFAULT_HIGH_WATER // 4


# The socket methods asyncio's transports and sock_* methods do their I/O through.
_SOCKET_IO_METHODS = (
    "recv",
    "recv_into",
    "recvfrom",
    "recvfrom_into",
    "send",
    "sendto",
    "sendall",
)
_io_overridden: "weakref.WeakKeyDictionary[type, bool]" = weakref.WeakKeyDictionary()


def overrides_socket_io(sock: Any) -> bool:
    """Whether ``sock`` is of a ``socket.socket`` subclass that overrides an I/O method: its
    I/O must then go through those methods, as asyncio's does, not straight to the fd."""
    cls = type(sock)
    if cls is socket.socket:
        return False
    overridden = _io_overridden.get(cls)
    if overridden is None:
        overridden = any(
            getattr(cls, name, None) is not getattr(socket.socket, name)
            for name in _SOCKET_IO_METHODS
        )
        _io_overridden[cls] = overridden
    return overridden


def _takes_parameter(func: Any, name: str) -> bool:
    # Whether this Python's version of an asyncio function has the parameter `name`.
    import inspect

    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


# Python 3.13's Handle._run() formats the callback with debug=loop.get_debug() (its arguments
# are left out unless debug mode is on); earlier versions always show them.
_FORMAT_TAKES_DEBUG = _takes_parameter(format_helpers._format_callback_source, "debug")


def _report_callback_error(handle: events.Handle, exc: BaseException) -> None:
    # What Handle._run() does with an exception from its callback.
    if _FORMAT_TAKES_DEBUG:
        cb = format_helpers._format_callback_source(
            handle._callback, handle._args, debug=handle._loop.get_debug()
        )
    else:
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


# Python 3.13 changed Server._attach()/_detach() to take the transport.
_SERVER_HOOKS_TAKE_TRANSPORT = _takes_parameter(Server._attach, "transport")


#: RingStreamTransport._receiving while reading: which receive fast path dispatch() takes.
RECEIVING_DATA = 1
RECEIVING_BUFFERED = 2


class RingStreamTransport(transports._FlowControlMixin, transports.Transport):
    """asyncio stream transport on ringloop completions."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    #: Bytes one recv() may return in readiness mode (the selector transport's value).
    max_size = 256 * 1024

    # Read by __del__ even when __init__ failed early.
    _sock: Optional[socket.socket] = None

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: protocols.BaseProtocol,
        waiter: Optional[Any] = None,
        extra: Optional[dict] = None,
        server: Optional[Server] = None,
    ) -> None:
        # _FlowControlMixin.__init__ and the limits it sets by default, spelled out (this runs
        # once per connection, as the rest of __init__).
        self._extra = extra = {} if extra is None else extra
        self._loop = loop
        self._protocol_paused = False
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_LOW_WATER
        extra["socket"] = trsock.TransportSocket(sock)
        try:
            extra["sockname"] = sock.getsockname()
        except OSError:
            extra["sockname"] = None
        if "peername" not in extra:
            try:
                extra["peername"] = sock.getpeername()
            except OSError:
                extra["peername"] = None
        self._sock = sock
        self._sock_fd = sock.fileno()
        # What every protocol callback runs in: RingSelector.dispatch() enters it for this
        # transport's events, and the callbacks the transport schedules carry it.
        self._context = _copy_context()
        self._reactor = loop._reactor
        self._buffers = loop._reactor.buffers
        self._buffer_bytes = loop._reactor.buffer_bytes
        self._buffer_size = loop._reactor.buffer_size
        self._handlers = loop._handlers

        # Receiving: a multishot receive, or a readiness watch plus recv() from Python (the
        # mode is chosen once the protocol is known, below). Each arming gets a fresh token,
        # registered only while armed: a paused transport is not referenced by the loop (an
        # abandoned one is collected and warns, as in asyncio).
        self._multishot = False
        self._new_token = loop._new_token
        self._recv_token = 0
        self._recv_op: Optional[int] = None
        self._read_eof = False  # the peer's EOF (or a read error) ended receiving for good
        self._selector = loop._selector
        self._data_iteration = -1  # the poll that last brought data (multishot mode)
        # Events the current poll returned after pause_reading(): delivered on resume, in order.
        # b"" marks EOF.
        self._held: List[bytes] = []

        # Sending: the chunk the reactor is sending and what was written after it.
        self._send_token = loop._new_token()  # registered while a send is in flight
        self._send_op: Optional[int] = None
        self._inflight: Optional[bytes] = None
        self._pending: List[bytes] = []
        self._write_size = 0

        self._conn_lost = 0
        self._closing = False
        self._paused = False
        self._eof = False
        self._empty_waiter: Optional[futures.Future] = None
        # not (write_size or eof or conn_lost or closing or empty_waiter): write() may go
        # straight to the socket. Cleared by every change that ends that state, recomputed
        # where it may return.
        self._write_idle = True

        self._protocol_connected = False
        self._buffered = False
        # The one test of the receive fast path: RECEIVING_DATA (a Protocol) or
        # RECEIVING_BUFFERED (a BufferedProtocol) while neither closing nor paused, else 0.
        self._receiving = 0
        self._deliver = self._deliver_data
        self.set_protocol(protocol)
        # A BufferedProtocol reads in readiness mode: a completion receive would land its bytes in
        # the reactor's buffers and then need a second copy into the protocol's buffer, which at
        # 100 KiB messages cost ~35% more server CPU per round trip than asyncio's recv_into
        # (and no less at 1 and 10 KiB). The mode stays for the transport's life, whatever
        # protocol set_protocol() brings later (start_tls): a cancelled multishot receive keeps
        # bytes it took for the next receive op on the socket, which a recv() from Python would
        # overtake.
        self._multishot = not self._buffered

        self._server = server
        if server is not None:
            if _SERVER_HOOKS_TAKE_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[self._sock_fd] = self
        # asyncio's _set_nodelay(sock), on the socket's numbers instead of its enum properties.
        if (
            _sock_family(sock) in _INET_FAMILIES
            and _sock_type(sock) == _SOCK_STREAM
            and _sock_proto(sock) == _IPPROTO_TCP
        ):
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        loop.call_soon(self._connected, self._protocol, waiter, context=self._context)

    def _connected(self, protocol: protocols.BaseProtocol, waiter: Optional[Any]) -> None:
        # asyncio's transports schedule protocol.connection_made(), the start of reading and the
        # waiter's result as three callbacks in a row; this one callback runs the three in that
        # order (two handles less per connection). A failing connection_made() is reported as
        # its own handle would have been, and the rest goes on, as asyncio's next callbacks do.
        try:
            protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            # The loop stops; the rest runs when it goes on, as asyncio's queued callbacks would.
            self._loop.call_soon(self._connected_rest, waiter, context=self._context)
            raise
        except BaseException as exc:
            handle = events.Handle(protocol.connection_made, (self,), self._loop, None)
            _report_callback_error(handle, exc)
        self._connected_rest(waiter)

    def _connected_rest(self, waiter: Optional[Any]) -> None:
        self._start_reading()  # reading starts only once connection_made() has run
        if waiter is not None:
            futures._set_result_unless_cancelled(waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=polling" if self._recv_op is not None else "read=idle")
            state = "polling" if self._inflight is not None else "idle"
            info.append(f"write=<{state}, bufsize={self._write_size}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._stop_reading()
            self._sock.close()

    # -- protocol --------------------------------------------------------------------------

    def set_protocol(self, protocol: protocols.BaseProtocol) -> None:
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._deliver = self._deliver_buffered if self._buffered else self._deliver_data
        self._protocol = protocol
        self._refresh_receiving()
        self._protocol_connected = True

    def get_protocol(self) -> protocols.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    # -- reading ---------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._refresh_receiving()
        self._stop_reading()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._refresh_receiving()
        if self._held or (self._multishot and self._selector.batch_pending):
            # On the loop's next turn: data that arrived after the pause goes first (asyncio
            # never calls back into the protocol from resume_reading() itself), and a new
            # multishot receive is armed only once every event the current poll
            # returned for the cancelled one has been dispatched.
            self._loop.call_soon(self._start_reading, context=self._context)
        else:
            self._start_reading()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _refresh_receiving(self) -> None:
        if self._closing or self._paused:
            self._receiving = 0
        else:
            self._receiving = RECEIVING_BUFFERED if self._buffered else RECEIVING_DATA

    def _start_reading(self) -> None:
        while self._held:
            if self._closing or self._paused:
                return
            data = self._held.pop(0)
            if data:
                self._deliver(data)
            else:
                self._on_eof()
        if self._closing or self._paused or self._read_eof or self._recv_op is not None:
            return
        token = self._new_token()
        try:
            if self._multishot:
                self._recv_op = self._reactor.recv(self._sock_fd, token)
                # The transport itself: RingSelector.dispatch() runs the data path inline.
                self._handlers[token] = self
            else:
                self._recv_op = self._reactor.watch(self._sock_fd, READABLE, token)
                self._handlers[token] = _partial(self._context.run, self._on_readable)
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        self._recv_token = token

    def _stop_reading(self) -> None:
        op, self._recv_op = self._recv_op, None
        token, self._recv_token = self._recv_token, 0
        if token:
            if self._multishot and self._selector.batch_pending:
                # Events of this receive may still be queued in the current batch: they carry
                # bytes, so its handler stays until the batch is over.
                self._selector.retire(token)
            else:
                self._handlers.pop(token, None)
        if op is not None:
            # (The cancel reaches the kernel before rl_op_cancel returns, so a close() right
            # after really closes the socket.)
            try:
                self._reactor.cancel(op)
            except RuntimeError:
                pass  # the loop is gone: nothing left to cancel

    def _on_recv(self, result: int, flags: int, aux: int) -> None:
        # Every receive event but the steady state's (a chunk for a reading Protocol transport,
        # which RingSelector.dispatch() hands to data_received() itself).
        if not flags & EV_MORE:
            # The multishot receive ended by itself (EOF, error): no new one is armed meanwhile,
            # since re-arming waits until the batch is dispatched.
            self._recv_op = None
            self._handlers.pop(self._recv_token, None)
            self._recv_token = 0
        if self._closing:
            return
        if result > 0:
            start = aux * self._buffer_size
            view = self._buffers[start : start + result]
            self._data_iteration = self._selector.iteration
            if self._paused:
                self._held.append(bytes(view))
                return
            self._deliver(view)
            if not flags & EV_MORE and self._recv_op is None:
                # The reactor ended the multishot receive without EOF: arm a new one.
                self._start_reading()
        elif result == 0:
            self._read_eof = True
            if self._data_iteration == self._selector.iteration:
                # Data and EOF came from the same poll: eof_received() waits for the next turn,
                # as with the selector loop (which sees EOF on the recv() after the one that
                # returned the last data); protocols may rely on that turn in between.
                self._loop.call_soon(self._deliver_eof, context=self._context)
            else:
                self._deliver_eof()
        else:
            if result == -_ECANCELED:
                return
            self._read_eof = True
            self._fatal_error(
                OSError(-result, os.strerror(-result)), "Fatal read error on socket transport"
            )

    def _on_readable(self, result: int, flags: int, aux: int) -> None:
        # Readiness mode: one recv() per readiness event, exactly as the selector transport; for
        # a BufferedProtocol (the usual case here) into its buffer, inline (it runs through
        # Context.run(), which made a second frame cost twice what it would cost called in place).
        if self._closing or self._paused or self._recv_op is None:
            return
        if not self._buffered:
            self._read_into_scratch()  # a plain protocol, set by set_protocol() since
            return
        try:
            buf = self._protocol.get_buffer(-1)
            if not len(buf):
                raise RuntimeError("get_buffer() returned an empty buffer")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return
        try:
            nbytes = self._sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not nbytes:
            self._read_eof = True
            self._stop_reading()
            self._on_eof()
            return
        try:
            self._protocol.buffer_updated(nbytes)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")

    def _read_into_scratch(self) -> None:
        # Into the loop's scratch buffer, then one exact-size copy: recv(max_size) would
        # allocate (and, at this size, mmap and munmap) max_size bytes on every call.
        scratch = self._loop._recv_scratch
        try:
            nbytes = self._sock.recv_into(scratch)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if nbytes:
            self._deliver_data(scratch[:nbytes])
        else:
            self._read_eof = True
            self._stop_reading()
            self._on_eof()

    def _deliver_eof(self) -> None:
        if self._closing:
            return
        if self._paused or self._held:
            self._held.append(b"")
            return
        self._on_eof()

    def _deliver_data(self, view: Any) -> None:
        try:
            self._protocol.data_received(bytes(view))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _deliver_buffered(self, view: Any) -> None:
        # ``view``: bytes or a byte-format memoryview. Usually one get_buffer() holds it all; a
        # smaller buffer gets what fits, and get_buffer() is asked again for the rest.
        protocol = self._protocol
        remaining = len(view)
        while True:
            try:
                target = protocol.get_buffer(remaining)
                # A bytearray or a flat byte memoryview takes the bytes as it is (same-length
                # slice assignment copies in place); anything else through a byte view of it.
                kind = type(target)
                if not (
                    kind is bytearray
                    or (kind is memoryview and target.ndim == 1 and target.format == "B")
                ):
                    target = memoryview(target).cast("B")
                space = len(target)
                if not space:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                if space >= remaining:
                    target[:remaining] = view
                    count = remaining
                else:
                    target[:] = view[:space]
                    count = space
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            finally:
                target = None  # no export of the protocol's buffer outlives the copy
            if count < remaining:
                view = view[count:]
            remaining -= count
            try:
                protocol.buffer_updated(count)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
            if not remaining:
                return
            if self._closing or self._paused:
                if not self._closing:
                    self._held.insert(0, bytes(view))
                return

    def _on_eof(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # -- writing ---------------------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        return self._write_size

    def write(self, data: Any) -> None:
        if self._write_idle and type(data) is bytes and data:
            # The steady state, kept short: nothing queued, so the bytes go to the socket now.
            # os.write on the transport's own fd (closed only by the transport, which clears
            # _write_idle first) costs less than socket.send's argument parsing.
            try:
                n = _os_write(self._sock_fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if n == len(data):
                return
            self._submit(data[n:] if n else data)
            self._maybe_pause_protocol()
            return
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if self._write_size:
            # A send is in flight: keep order by queueing behind it. Copy what may change.
            chunk = data if type(data) is bytes else bytes(data)
            self._pending.append(chunk)
            self._write_size += len(chunk)
        else:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if n == len(data):
                return
            self._submit(bytes(memoryview(data)[n:]) if n or type(data) is not bytes else data)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _submit(self, chunk: bytes) -> None:
        self._write_idle = False
        self._inflight = chunk
        self._write_size += len(chunk)
        try:
            self._send_op = self._reactor.send(self._sock_fd, chunk, self._send_token)
            self._handlers[self._send_token] = _partial(self._context.run, self._on_send)
        except (OSError, RuntimeError) as exc:
            self._inflight = None
            self._write_size = 0
            self._pending.clear()
            self._fatal_error(exc, "Fatal write error on socket transport")

    def _on_send(self, result: int, flags: int, aux: int) -> None:
        chunk, self._inflight = self._inflight, None
        self._send_op = None
        self._handlers.pop(self._send_token, None)
        if chunk is None or self._sock is None:
            # Connection already lost: the reactor has let go of the chunk; so do we.
            return
        if self._conn_lost:
            return
        if result < 0:
            exc = OSError(-result, os.strerror(-result))
            self._pending.clear()
            self._write_size = 0
            self._fatal_error(exc, "Fatal write error on socket transport")
            if self._empty_waiter is not None:
                self._empty_waiter.set_exception(exc)
            return
        self._write_size -= len(chunk)
        if result < len(chunk):
            self._pending.insert(0, chunk[result:])
            self._write_size += len(chunk) - result
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            self._write_size -= len(data)
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                if self._empty_waiter is not None:
                    self._empty_waiter.set_exception(exc)
                return
            if n < len(data):
                self._submit(data[n:] if n else data)
                if self._inflight is None:
                    return  # the submission failed and closed the transport
        self._maybe_resume_protocol()  # may write more
        self._refresh_write_idle()
        if not self._write_size:
            if self._empty_waiter is not None:
                self._empty_waiter.set_result(None)
            if self._closing:
                self._call_connection_lost(None)
            elif self._eof:
                self._sock.shutdown(socket.SHUT_WR)

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        self._write_idle = False
        if not self._write_size:
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self) -> bool:
        return True

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._refresh_receiving()
        self._write_idle = False
        self._stop_reading()
        if not self._write_size:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None, context=self._context)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: Optional[BaseException]) -> None:
        if self._conn_lost:
            return
        if self._write_size:
            self._pending.clear()
            self._write_size = 0
            op = self._send_op
            if op is not None:
                # The chunk stays referenced until the send's final event.
                try:
                    self._reactor.cancel(op)
                except RuntimeError:
                    pass
        if not self._closing:
            self._closing = True
            self._refresh_receiving()
            self._write_idle = False
            self._stop_reading()
        self._conn_lost += 1
        self._write_idle = False
        self._loop.call_soon(self._call_connection_lost, exc, context=self._context)

    def _call_connection_lost(self, exc: Optional[BaseException]) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._stop_reading()
            self._held.clear()
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._loop = None
            server = self._server
            if server is not None:
                if _SERVER_HOOKS_TAKE_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
            waiter = self._empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))

    # -- sendfile support (BaseSelectorEventLoop._sendfile_native) -----------------------------

    def _make_empty_waiter(self) -> futures.Future:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        self._write_idle = False
        if not self._write_size:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
        self._refresh_write_idle()

    def _refresh_write_idle(self) -> None:
        # Never once closing: the socket (and so the fd number) may be gone.
        self._write_idle = not (
            self._write_size
            or self._eof
            or self._conn_lost
            or self._closing
            or self._empty_waiter is not None
        )


# asyncio's datagram and read-pipe transports read with recvfrom(max_size) / os.read(max_size):
# a fresh max_size (256 KiB) bytes object per read. Until the process has freed some larger
# block, glibc serves a request that size with mmap (and the shrink to the bytes received with
# mremap, the free with munmap): ~11 us per read, three quarters of a UDP round trip here. These
# two read at most 64 KiB, which malloc always serves from its heap, into a bytes object of the
# exact size, as asyncio does: for IP datagrams that loses nothing (a UDP payload is at most
# 65,527 bytes); a pipe simply hands over what it holds in more reads (64 KiB is a default
# pipe's whole capacity). Everything else is asyncio's, and the bodies follow CPython's
# _read_ready (identical from 3.11 to 3.13).

#: The most one datagram or pipe read (and an at-once sock_recv) asks for.
MAX_READ_SIZE = 64 * 1024


class _ReceiveOp:
    """The one multishot receive op of a transport that reads through the library instead of on
    readiness (read pipes and UDP sockets on io_uring): arming it, cancelling it, and reporting a
    protocol's exception as asyncio's reader callback would."""

    _loop: Any
    _recv_op: Optional[int] = None
    _recv_token = 0

    def _arm_receive(self, start: Callable[[int, int], int], fd: int, handler: Any) -> None:
        # start(fd, token) is the Reactor method that starts the op; handler gets its events.
        loop = self._loop
        # Where the events' bytes are, for the handler. (Not _buffer_size: asyncio's datagram
        # transport counts its unsent bytes in that.)
        self._recv_bytes = loop._reactor.buffer_bytes
        self._recv_size = loop._reactor.buffer_size
        token = loop._new_token()
        self._recv_op = start(fd, token)  # (OSError for the caller)
        self._recv_token = token
        # Protocol callbacks run in a copy of the context reading started in, as asyncio's
        # reader handle runs them.
        loop._handlers[token] = _partial(_copy_context().run, handler)

    def _cancel_receive(self) -> None:
        op, self._recv_op = self._recv_op, None
        token, self._recv_token = self._recv_token, 0
        if token:
            selector = self._loop._selector
            if selector is not None and selector.batch_pending:
                selector.retire(token)  # its events of this batch still reach the handler
            else:
                self._loop._handlers.pop(token, None)
        if op is not None:
            try:
                self._loop._reactor.cancel(op)
            except RuntimeError:
                pass  # the loop is gone: nothing left to cancel

    def _receive_ended(self) -> None:
        # The op produced its last event (end of stream, error, cancel).
        if self._recv_token:
            self._loop._handlers.pop(self._recv_token, None)
            self._recv_op = None
            self._recv_token = 0

    def _report_error(self, exc: BaseException) -> None:
        # As asyncio reports an exception from a protocol method that its _read_ready() called:
        # one in the reader callback; reading goes on.
        handle = events.Handle(self._read_ready, (), self._loop, None)  # type: ignore[attr-defined]
        _report_callback_error(handle, exc)


class RingDatagramTransport(_ReceiveOp, selector_events._SelectorDatagramTransport):  # type: ignore[misc,name-defined]
    """asyncio's datagram transport. On io_uring a UDP socket receives through one multishot
    datagram receive: each datagram comes with the loop's one poll per iteration, with its
    sender, and no readiness event nor ``recvfrom()`` from Python. Unix datagram sockets, a
    ``max_size`` below 64 KiB and the epoll backend read as asyncio does, with a 64 KiB request
    (see ``Loop._recv_datagrams``). Sending is asyncio's."""

    # The receive mode is chosen when reading first starts, as for read pipes.
    _completion: Optional[bool] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Unix datagrams may be larger than 64 KiB: those keep asyncio's reads, as do sockets
        # whose class reads its own way.
        self._small_reads = (
            _sock_family(self._sock) in _INET_FAMILIES
            and self.max_size >= MAX_READ_SIZE
            and not overrides_socket_io(self._sock)
        )
        # Datagrams of the poll that paused reading, delivered on resume.
        self._held: List[Tuple[bytes, Any]] = []

    def _add_reader(self, fd: int, callback: Any, *args: Any) -> None:
        if not self.is_reading():
            return
        if self._completion is None:
            loop = self._loop
            self._completion = self._small_reads and loop._recv_datagrams
            if self._completion:
                # sockaddr_in: family, port, address (8 bytes, then padding); sockaddr_in6: 28.
                self._name_size = 8 if _sock_family(self._sock) == _AF_INET else 28
                self._addresses: Dict[bytes, Any] = {}
        if self._completion:
            self._start_receiving()
        else:
            self._loop._add_reader(fd, callback, *args)

    def pause_reading(self) -> None:
        if self._completion and self.is_reading():
            self._cancel_receive()
        super().pause_reading()

    def resume_reading(self) -> None:
        if not self._completion or self._closing or not self._paused:
            super().resume_reading()
            return
        self._paused = False
        if self._held or self._loop._selector.batch_pending:
            # On the next turn: held datagrams first, then a new receive.
            self._loop.call_soon(self._start_receiving)
        else:
            self._start_receiving()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def close(self) -> None:
        if self._completion and not self._closing:
            self._held.clear()
            self._cancel_receive()
        super().close()

    def _force_close(self, exc: Optional[BaseException]) -> None:
        if self._completion and not self._closing:
            self._held.clear()
            self._cancel_receive()
        super()._force_close(exc)

    def _start_receiving(self) -> None:
        while self._held:
            if not self.is_reading():
                return
            data, addr = self._held.pop(0)
            self._deliver(data, addr)
        if not self.is_reading() or self._recv_op is not None:
            return
        try:
            self._arm_receive(self._loop._reactor.recvmsg, self._sock_fd, self._on_datagram)
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")

    def _on_datagram(self, result: int, flags: int, aux: int) -> None:
        if result >= 0 and flags & EV_MORE:
            if self._closing:
                return
            start = aux * self._recv_size
            name = start + DGRAM_NAME
            key = self._recv_bytes[name : name + self._name_size]
            addr = self._addresses.get(key)
            if addr is None:
                addr = self._address_of(key)
            payload = start + DGRAM_PAYLOAD
            data = self._recv_bytes[payload : payload + result]
            if self._paused:
                self._held.append((data, addr))
            else:
                self._deliver(data, addr)
            return
        # The receive is over: an error (reported, and receiving goes on, as asyncio's reader
        # stays), or its cancel.
        self._receive_ended()
        if result == -_ECANCELED or self._closing:
            return
        try:
            self._protocol.error_received(OSError(-result, os.strerror(-result)))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report_error(exc)
        if not self._closing:
            self._start_receiving()

    def _address_of(self, key: bytes) -> Any:
        # The (host, port[, flowinfo, scope_id]) tuple recvfrom() would give for this sockaddr.
        port = int.from_bytes(key[2:4], "big")
        if len(key) == 8:
            addr: Any = (_inet_ntop(_AF_INET, key[4:8]), port)
        else:
            host = _inet_ntop(_AF_INET6, key[8:24])
            flowinfo = int.from_bytes(key[4:8], "big")
            scope_id = int.from_bytes(key[24:28], _BYTEORDER)
            if scope_id:
                # recvfrom() names a scoped address's interface ("fe80::1%eth0").
                host = socket.getnameinfo((host, port, flowinfo, scope_id), _NI_NUMERICHOST)[0]
            addr = (host, port, flowinfo, scope_id)
        if len(self._addresses) >= 4096:
            self._addresses.clear()  # many peers: a bounded cache, not a leak
        self._addresses[key] = addr
        return addr

    def _deliver(self, data: bytes, addr: Any) -> None:
        try:
            self._protocol.datagram_received(data, addr)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report_error(exc)

    def _read_ready(self) -> None:
        if not self._small_reads:
            super()._read_ready()
            return
        if self._conn_lost:
            return
        try:
            data, addr = self._sock.recvfrom(MAX_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
        else:
            self._protocol.datagram_received(data, addr)


class RingReadPipeTransport(_ReceiveOp, unix_events._UnixReadPipeTransport):  # type: ignore[misc,name-defined]
    """asyncio's read-pipe transport (subprocess output too). On io_uring a pipe or socket is
    read by a multishot receive: its bytes come with the loop's one poll per iteration, with no
    readiness event and no ``os.read()`` from Python. A character device (a tty), a ``max_size``
    below the loop's buffer size, an io_uring kernel that cannot read pipes (before Linux 6.7)
    and the epoll backend read as asyncio does, 64 KiB at a time (see ``Loop._recv_pipes``)."""

    # The receive mode is chosen when reading first starts (after connection_made(), which may
    # set max_size) and kept: a cancelled receive leaves the bytes it took for the next receive
    # op, which an os.read() would overtake.
    _completion: Optional[bool] = None

    def __init__(
        self,
        loop: Any,
        pipe: Any,
        protocol: protocols.BaseProtocol,
        waiter: Optional[Any] = None,
        extra: Optional[dict] = None,
    ) -> None:
        super().__init__(loop, pipe, protocol, waiter, extra)
        # Bytes that arrived in the poll that paused reading, delivered on resume.
        self._held: List[bytes] = []

    def __repr__(self) -> str:
        if not self._completion:
            return super().__repr__()  # type: ignore[no-any-return]
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        if self._pipe is not None and getattr(self._loop, "_selector", None) is not None:
            info.append("polling" if self._recv_op is not None else "idle")
        elif self._pipe is not None:
            info.append("open")  # the loop is closed
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))

    def _add_reader(self, fd: int, callback: Any) -> None:
        # asyncio's transport schedules this once connection_made() has run.
        if not self.is_reading():
            return
        if self._completion is None:
            self._choose_mode()
        if self._completion:
            self._start_reading()
        else:
            self._loop._add_reader(fd, callback)

    def _choose_mode(self) -> None:
        mode = os.fstat(self._fileno).st_mode
        self._completion = (
            (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))
            and self.max_size >= self._loop._reactor.buffer_size
            and self._loop._recv_pipes
        )

    def pause_reading(self) -> None:
        if not self._completion:
            super().pause_reading()
            return
        if not self.is_reading():
            return
        self._paused = True
        self._cancel_receive()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._completion is None and self._paused and not self._closing:
            self._choose_mode()  # paused before reading ever started
        if not self._completion:
            super().resume_reading()
            return
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held or self._loop._selector.batch_pending:
            # On the next turn, as in the socket transport: held bytes first, and a new receive
            # only once the events of the current poll have all been dispatched.
            self._loop.call_soon(self._start_reading)
        else:
            self._start_reading()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _close(self, exc: Optional[BaseException]) -> None:
        if not self._completion:
            super()._close(exc)
            return
        self._closing = True
        self._held.clear()
        self._cancel_receive()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _start_reading(self) -> None:
        while self._held:
            if not self.is_reading():
                return
            self._deliver(self._held.pop(0))
        if not self.is_reading() or self._recv_op is not None:
            return
        try:
            self._arm_receive(self._loop._reactor.recv, self._fileno, self._on_recv)
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")

    def _on_recv(self, result: int, flags: int, aux: int) -> None:
        if result > 0 and flags & EV_MORE and not (self._closing or self._paused):
            # The steady state: the bytes straight from the receive buffer to the protocol.
            start = aux * self._recv_size
            try:
                self._protocol.data_received(self._recv_bytes[start : start + result])
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._report_error(exc)
            return
        if not flags & EV_MORE:
            self._receive_ended()
        if self._closing:
            return
        if result > 0:
            start = aux * self._recv_size
            data = self._recv_bytes[start : start + result]
            if self._paused:
                self._held.append(data)
            else:
                self._deliver(data)
        elif result == -_ENOTSOCK:
            # This kernel's io_uring cannot read pipes: read them as asyncio does (and the
            # loop's next pipes too).
            self._loop._recv_pipes = False
            self._completion = False
            if self.is_reading():
                self._loop._add_reader(self._fileno, self._read_ready)
        elif result == 0:
            if self._loop.get_debug():
                logger.info("%r was closed by peer", self)
            self._closing = True
            self._loop.call_soon(self._protocol.eof_received)
            self._loop.call_soon(self._call_connection_lost, None)
        elif result != -_ECANCELED:
            self._fatal_error(
                OSError(-result, os.strerror(-result)), "Fatal read error on pipe transport"
            )

    def _deliver(self, data: bytes) -> None:
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report_error(exc)

    def _read_ready(self) -> None:
        if self.max_size < MAX_READ_SIZE:
            super()._read_ready()
            return
        try:
            data = os.read(self._fileno, MAX_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
        else:
            if data:
                self._protocol.data_received(data)
            else:
                if self._loop.get_debug():
                    logger.info("%r was closed by peer", self)
                self._closing = True
                self._loop._remove_reader(self._fileno)
                self._loop.call_soon(self._protocol.eof_received)
                self._loop.call_soon(self._call_connection_lost, None)
