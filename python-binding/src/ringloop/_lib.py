"""ctypes bindings to ``libringloop``'s raw token mode.

The loop calls the library rarely: one :meth:`Reactor.poll` per loop iteration (through
``ctypes.CDLL``, which releases the GIL while the call blocks) and one cheap call per submitted
operation (through ``ctypes.PyDLL``, which keeps the GIL and skips the release/re-acquire).
Events land in a preallocated array that the loop decodes through a ``memoryview``; received
bytes are read from the library's buffer region, mapped once as a ``memoryview``.
"""

from __future__ import annotations

import ctypes
import os
import struct
import weakref
from pathlib import Path
from typing import Any, List, Optional

__all__ = [
    "DGRAM_NAME",
    "DGRAM_PAYLOAD",
    "EVENT_SIZE",
    "EV_DATAGRAM",
    "EV_BUFFER",
    "EV_MORE",
    "READABLE",
    "WAKE_TOKEN",
    "WRITABLE",
    "Library",
    "Reactor",
    "library",
]

# Constants of ringloop.h (fixed by ffi/CONTRACT.md).
READABLE = 1
WRITABLE = 2
EV_MORE = 1
EV_BUFFER = 2
EV_DATAGRAM = 4
#: Where a datagram event's buffer holds the sender's address and the payload (RL_DGRAM_*).
DGRAM_NAME = 16
DGRAM_PAYLOAD = 144
WAKE_TOKEN = (1 << 64) - 1
TOKEN_RESERVED = 1 << 63
ERR_BASE = 100000
EHANDLE = -100001
OPT_IGNORE_ENV = 1
#: ``rl_options.flags`` bit: only one thread ever polls the loop (see ``RL_OPT_SINGLE_THREAD``).
OPT_SINGLE_THREAD = 2
BACKENDS = {"auto": 0, "io_uring": 1, "epoll": 2}

#: One ``rl_event``: token u64, result i32, flags u32, aux u64 (little-endian, no padding).
EVENT_STRUCT = struct.Struct("<QiIQ")
EVENT_SIZE = EVENT_STRUCT.size
assert EVENT_SIZE == 24

_LIBNAME = "libringloop.so"


class rl_options(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("backend", ctypes.c_uint32),
        ("buffer_size", ctypes.c_uint32),
        ("buffer_count", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


def _workspace_library(start: Path) -> Optional[Path]:
    """``<workspace>/target/release/libringloop.so`` for a package run from a source tree."""
    for directory in (start, *start.parents):
        manifest = directory / "Cargo.toml"
        try:
            text = manifest.read_text(encoding="utf-8")
        except OSError:
            continue
        if "[workspace]" in text:
            return directory / "target" / "release" / _LIBNAME
    return None


def _candidates() -> List[Path]:
    here = Path(__file__).resolve().parent
    found = []
    env = os.environ.get("RINGLOOP_LIBRARY")
    if env:
        found.append(Path(env))
    found.append(here / _LIBNAME)
    dev = _workspace_library(here)
    if dev is not None:
        found.append(dev)
    return found


_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_i32 = ctypes.c_int
_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p
# Prepared parameters for calls without argtypes (see Reactor.loop_arg).
_pointer_param = _ptr.from_param
_i64_param = _i64.from_param
_u32_param = _u32.from_param
# rl_poll's arguments once the loop is gone: a NULL loop (RL_EHANDLE) and no event array.
_FREED_POLL_ARGS = (None, _i64_param(0), None, _u32_param(0))

# name: (restype, argtypes, blocking)
_SIGNATURES = {
    "rl_version": (_u32, [], False),
    "rl_strerror": (ctypes.c_char_p, [_i32], False),
    "rl_options_init": (None, [ctypes.POINTER(rl_options)], False),
    "rl_loop_new": (_i32, [ctypes.POINTER(rl_options), ctypes.POINTER(_ptr)], False),
    "rl_loop_free": (_i32, [_ptr], True),
    "rl_loop_backend": (ctypes.c_char_p, [_ptr], False),
    "rl_poll": (_i32, [_ptr, _i64, _ptr, _u32], True),
    "rl_op_watch": (_i32, [_ptr, _i32, _u32, _u64, _ptr], False),
    "rl_op_recv": (_i32, [_ptr, _i32, _u64, _ptr], False),
    "rl_op_send": (_i32, [_ptr, _i32, _ptr, ctypes.c_size_t, _u64, _ptr], False),
    "rl_op_cancel": (_i32, [_ptr, _u64], False),
    "rl_buffers": (_i32, [_ptr, ctypes.POINTER(_ptr), ctypes.POINTER(_u32), ctypes.POINTER(_u32)], False),
    "rl_wake": (_i32, [_ptr], False),
}


class Library:
    """The loaded shared library with every function's ``argtypes``/``restype`` set.

    Blocking functions come from a ``CDLL`` view (GIL released during the call), the others from a
    ``PyDLL`` view of the same library (GIL kept: cheaper for calls that never block).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        mode = getattr(os, "RTLD_NOW", 0) | getattr(os, "RTLD_LOCAL", 0)
        cdll = ctypes.CDLL(str(path), mode=mode)
        pydll = ctypes.PyDLL(str(path), mode=mode)
        for name, (restype, argtypes, blocking) in _SIGNATURES.items():
            func = getattr(cdll if blocking else pydll, name)
            func.restype = restype
            func.argtypes = argtypes
            setattr(self, name, func)
        # Newer than the rest (library version 0.2): None when RINGLOOP_LIBRARY names an older
        # build, and the loop then receives through readiness as asyncio does.
        self.rl_op_recv_once: Optional[Any] = None
        self.rl_op_recv_once_bare: Optional[Any] = None
        try:
            func = pydll.rl_op_recv_once
        except AttributeError:
            pass
        else:
            func.restype = _i32
            func.argtypes = [_ptr, _i32, _u32, _u64, _ptr]
            self.rl_op_recv_once = func
            # Without argtypes, for Reactor.recv_once (one call per sock_recv): see there.
            self.rl_op_recv_once_bare = pydll._FuncPtr(("rl_op_recv_once", pydll))
            self.rl_op_recv_once_bare.restype = _i32
        # Library version 0.6: None in an older build, whose loops read UDP as asyncio does.
        self.rl_op_recvmsg: Optional[Any] = None
        try:
            func = pydll.rl_op_recvmsg
        except AttributeError:
            pass
        else:
            func.restype = _i32
            func.argtypes = [_ptr, _i32, _u64, _ptr]
            self.rl_op_recvmsg = func
        # rl_poll without argtypes, for the loop's once-per-iteration poll: it passes
        # parameters prepared once (Reactor.poll_forever_args and poll_nowait_args), so no
        # argument is converted per call. With a zero timeout it never blocks, so that call may
        # keep the GIL (PyDLL).
        self.rl_poll_bare = cdll._FuncPtr(("rl_poll", cdll))
        self.rl_poll_bare.restype = _i32
        self.rl_poll_nowait_bare = pydll._FuncPtr(("rl_poll", pydll))
        self.rl_poll_nowait_bare.restype = _i32
        # rl_wake likewise (once per loop iteration from call_soon_threadsafe), with the
        # reactor's prepared loop parameter.
        self.rl_wake_bare = pydll._FuncPtr(("rl_wake", pydll))
        self.rl_wake_bare.restype = _i32
        self.version = self.rl_version()

    def strerror(self, code: int) -> str:
        name = self.rl_strerror(code)
        return name.decode("utf-8", "replace") if name else f"error {code}"

    def error(self, code: int) -> Exception:
        """The Python exception for a negative return code."""
        if code == EHANDLE:
            return RuntimeError(
                "ringloop: the event loop's C handle is not valid here "
                "(the loop was closed, or this process was forked from the one that created it)"
            )
        if -ERR_BASE < code < 0:
            errno = -code
            return OSError(errno, os.strerror(errno))
        return RuntimeError(f"ringloop: {self.strerror(code)} ({code})")


def _load() -> Library:
    tried = []
    for candidate in _candidates():
        if not candidate.is_file():
            tried.append(f"{candidate} (not found)")
            continue
        try:
            return Library(candidate)
        except (OSError, AttributeError) as exc:
            tried.append(f"{candidate} ({exc})")
    raise ImportError(
        "ringloop: cannot load libringloop.so; tried: "
        + "; ".join(tried)
        + ". Set RINGLOOP_LIBRARY to the library's path, install the package with pip "
        "(which bundles it), or build it with `cargo build --release -p ringloop-ffi`."
    )


#: The process-wide library (immutable once loaded).
library = _load()

# Reactors whose C loop lives in this process. After fork() the child shares the parent's io_uring
# rings (MAP_SHARED) and eventfd: touching them would corrupt the parent's loop, so the child
# detaches every reactor it inherited and each later call fails with a clear RuntimeError.
_live_reactors: "weakref.WeakSet[Reactor]" = weakref.WeakSet()


def _detach_after_fork() -> None:
    for reactor in list(_live_reactors):
        reactor._forget()
    _live_reactors.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_after_fork)


class Reactor:
    """One C loop (``rl_loop``) used in raw token mode.

    Methods raise ``OSError`` for ``-errno`` results and ``RuntimeError`` for the library's own
    codes. ``events`` is a byte view of the event array that :meth:`poll` fills; ``buffers`` is a
    read-only byte view of the whole receive-buffer region (buffer ``id`` starts at
    ``id * buffer_size``).
    """

    def __init__(
        self,
        backend: Optional[str] = None,
        *,
        buffer_size: int = 0,
        buffer_count: int = 0,
        capacity: int = 1024,
        single_thread: bool = False,
    ) -> None:
        lib = library
        self._lib = lib
        self._handle = 0
        # The calls made without argtypes (the per-iteration poll, recv_once) take their
        # arguments as prepared ctypes parameters (c_void_p.from_param() and friends): passed
        # as they are, where a ctypes object is converted to such a parameter on every call
        # (~25 ns an argument). The loop parameter is made with _handle and replaced with NULL
        # when it is dropped, so a call after free() or in a forked child gets RL_EHANDLE; the
        # selector reads the poll arguments from here on every call for that reason.
        self.loop_arg: Any = None
        self.poll_forever_args: tuple = _FREED_POLL_ARGS
        self.poll_nowait_args: tuple = _FREED_POLL_ARGS
        opts = rl_options()
        lib.rl_options_init(ctypes.byref(opts))
        if backend is not None:
            try:
                opts.backend = BACKENDS[backend]
            except KeyError:
                raise ValueError(
                    f"backend must be one of {sorted(BACKENDS)} or None, not {backend!r}"
                ) from None
            if backend != "auto":
                opts.flags |= OPT_IGNORE_ENV
        if single_thread:
            opts.flags |= OPT_SINGLE_THREAD
        opts.buffer_size = buffer_size
        opts.buffer_count = buffer_count
        handle = ctypes.c_void_p()
        rc = lib.rl_loop_new(ctypes.byref(opts), ctypes.byref(handle))
        if rc < 0:
            raise lib.error(rc)
        self._handle = handle.value or 0
        self._pid = os.getpid()
        _live_reactors.add(self)

        name = lib.rl_loop_backend(self._handle)
        self.backend = name.decode() if name else "unknown"

        base = ctypes.c_void_p()
        size = ctypes.c_uint32()
        count = ctypes.c_uint32()
        rc = lib.rl_buffers(self._handle, ctypes.byref(base), ctypes.byref(size), ctypes.byref(count))
        if rc < 0:
            self.free()
            raise lib.error(rc)
        self.buffer_size = size.value
        self.buffer_count = count.value
        total = size.value * count.value
        if total and base.value:
            region = (ctypes.c_ubyte * total).from_address(base.value)
            self.buffers = memoryview(region).cast("B").toreadonly()
            # The same memory as a char array: slicing it makes a bytes object in one step
            # (a third of the cost of bytes(memoryview slice)), for data_received().
            self.buffer_bytes: Any = (ctypes.c_char * total).from_address(base.value)
        else:
            self.buffers = memoryview(b"")
            self.buffer_bytes = b""

        self.capacity = capacity
        self._event_array = (ctypes.c_ubyte * (capacity * EVENT_SIZE))()
        self._event_addr = ctypes.addressof(self._event_array)
        self.events = memoryview(self._event_array).cast("B")

        self._out = ctypes.c_uint64()
        self._out_addr = ctypes.addressof(self._out)

        #: rl_poll (GIL released) and its non-blocking twin (GIL kept), without argtypes: called
        #: with poll_forever_args / poll_nowait_args, or poll_args(timeout_ns).
        self.poll_wait = lib.rl_poll_bare
        self.poll_nowait = lib.rl_poll_nowait_bare
        self._poll_events = _pointer_param(self._event_addr)
        self._poll_capacity = _u32_param(capacity)
        self._set_loop_arg(self._handle)
        self._watch = lib.rl_op_watch
        self._recv = lib.rl_op_recv
        # recv_once() calls rl_op_recv_once without argtypes (their conversions were ~40% of a
        # ~0.56 us call): the loop and out pointers go as prepared parameters, the token as a
        # c_uint64 set per call; fd and max_len as Python ints, which ctypes passes as C
        # ints (the same 32 bits as the u32 max_len below 2**31, and recv_once keeps it there).
        self._recv_once = lib.rl_op_recv_once_bare
        self._token_arg = ctypes.c_uint64()
        self._out_arg = _pointer_param(self._out_addr)
        #: Whether :meth:`recv_once` exists in this library.
        self.has_recv_once = lib.rl_op_recv_once is not None
        self._recvmsg = lib.rl_op_recvmsg
        #: Whether :meth:`recvmsg` exists in this library.
        self.has_recvmsg = lib.rl_op_recvmsg is not None
        self._send = lib.rl_op_send
        self._cancel = lib.rl_op_cancel
        self._wake = lib.rl_wake_bare

    # -- lifetime ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return not self._handle

    def _set_loop_arg(self, handle: int) -> None:
        if handle:
            self.loop_arg = _pointer_param(handle)
            self.poll_forever_args = self.poll_args(-1)
            self.poll_nowait_args = self.poll_args(0)
        else:
            self.loop_arg = None  # passed as NULL
            self.poll_forever_args = self.poll_nowait_args = _FREED_POLL_ARGS

    def _forget(self) -> None:
        """Drops the handle without calling into the library (the child side of a fork)."""
        self._handle = 0
        self._set_loop_arg(0)

    def free(self) -> None:
        """Frees the C loop; idempotent, and a no-op in a forked child."""
        handle, self._handle = self._handle, 0
        self._set_loop_arg(0)
        _live_reactors.discard(self)
        if handle and self._pid == os.getpid():
            rc = self._lib.rl_loop_free(handle)
            if rc < 0:
                raise self._lib.error(rc)

    def __del__(self) -> None:
        # Safety net only: the loop frees its reactor in close().
        try:
            self.free()
        except Exception:
            pass

    # -- raw mode -----------------------------------------------------------------------------

    def poll_args(self, timeout_ns: int) -> tuple:
        """rl_poll's arguments for waiting up to ``timeout_ns`` (``-1`` forever, ``0`` not at
        all) into :attr:`events`, for :attr:`poll_wait` / :attr:`poll_nowait`."""
        return (self.loop_arg, _i64_param(timeout_ns), self._poll_events, self._poll_capacity)

    def poll_failed(self, code: int) -> int:
        """What a negative rl_poll result means: ``0`` events for ``-EINTR`` (a signal arrived;
        the loop runs its handlers and polls again), else the exception is raised."""
        if code == -4:
            return 0
        raise self._lib.error(code)

    def watch(self, fd: int, interest: int, token: int) -> int:
        rc = self._watch(self._handle, fd, interest, token, self._out_addr)
        if rc < 0:
            raise self._lib.error(rc)
        return self._out.value

    def recv(self, fd: int, token: int) -> int:
        rc = self._recv(self._handle, fd, token, self._out_addr)
        if rc < 0:
            raise self._lib.error(rc)
        return self._out.value

    def recvmsg(self, fd: int, token: int) -> int:
        """A multishot datagram receive: one event per datagram, laid out in its buffer as
        ``DGRAM_*`` say."""
        rc = self._recvmsg(self._handle, fd, token, self._out_addr)
        if rc < 0:
            raise self._lib.error(rc)
        return self._out.value

    def recv_once(self, fd: int, max_len: int, token: int) -> int:
        """One receive of at most ``max_len`` bytes (capped at the buffer size) into a receive
        buffer; exactly one event carries ``token``."""
        # (fd comes from a socket's fileno(), so fits a C int; a negative one gets EBADF.)
        token_arg = self._token_arg
        token_arg.value = token
        # (A conditional, not min(): the builtin's argument handling costs ~6 times as much.)
        rc = self._recv_once(
            self.loop_arg, fd, max_len if max_len < 0x7FFFFFFF else 0x7FFFFFFF, token_arg,
            self._out_arg,
        )
        if rc < 0:
            raise self._lib.error(rc)
        return self._out.value

    def send(self, fd: int, data: bytes, token: int) -> int:
        """Queues ``data`` (a ``bytes`` object the caller keeps alive until the op's event)."""
        rc = self._send(self._handle, fd, data, len(data), token, self._out_addr)
        if rc < 0:
            raise self._lib.error(rc)
        return self._out.value

    def cancel(self, op: int) -> bool:
        """Cancels an op; ``False`` when it had already ended (a stale id)."""
        rc = self._cancel(self._handle, op)
        if rc < 0:
            if rc == -2:  # ENOENT: the op already ended
                return False
            raise self._lib.error(rc)
        return True

    def wake(self) -> None:
        """Thread-safe; errors (a closed or forked-away loop) are ignored: there is nothing to wake."""
        loop_arg = self.loop_arg  # (None once freed; a stale handle gets RL_EHANDLE)
        if loop_arg is not None:
            self._wake(loop_arg)
