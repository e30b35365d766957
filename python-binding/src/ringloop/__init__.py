"""ringloop: a fast asyncio event loop on io_uring (or epoll), a drop-in for uvloop.

>>> import ringloop
>>> ringloop.run(main())                      # like asyncio.run(), on a ringloop.Loop
>>> loop = ringloop.new_event_loop()          # or ringloop.Loop(backend="epoll")
>>> loop.backend
'io_uring'
"""

from __future__ import annotations

import asyncio as _asyncio
import sys as _sys
import warnings as _warnings
from typing import Any, Callable, Coroutine, Optional, Tuple, TypeVar

if _sys.version_info < (3, 11):  # pragma: no cover
    raise ImportError("ringloop requires Python 3.11 or newer")

from ._lib import library as _library
from ._loop import Loop

__all__: Tuple[str, ...] = ("Loop", "new_event_loop", "run")

_T = TypeVar("_T")

#: Version of the loaded libringloop, as ``(major, minor, patch)``.
library_version = (_library.version >> 16, (_library.version >> 8) & 0xFF, _library.version & 0xFF)


def __getattr__(name: str) -> Any:
    # Resolved on first use: importlib.metadata is too slow to import with every ringloop import.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("ringloop")
        except PackageNotFoundError:
            return "0+unknown"  # running from a source tree that was never installed
    raise AttributeError(f"module 'ringloop' has no attribute {name!r}")


def new_event_loop(
    *, backend: Optional[str] = None, single_thread: Optional[bool] = None
) -> Loop:
    """A new :class:`Loop` (``backend``: ``"io_uring"``, ``"epoll"`` or ``None`` for automatic;
    ``single_thread``: see :class:`Loop`)."""
    return Loop(backend=backend, single_thread=single_thread)


def run(
    main: Coroutine[Any, Any, _T],
    *,
    loop_factory: Callable[[], Loop] = new_event_loop,
    debug: Optional[bool] = None,
    **run_kwargs: Any,
) -> _T:
    """Runs ``main`` to completion on a new ringloop loop, like :func:`asyncio.run`."""

    async def _on_ringloop() -> _T:
        if not isinstance(_asyncio.get_running_loop(), Loop):
            raise TypeError("ringloop.run() needs a loop_factory that returns a ringloop.Loop")
        return await main

    # Checked before the wrapper coroutine exists, so refusing leaves nothing un-awaited.
    if _asyncio._get_running_loop() is not None:
        raise RuntimeError("ringloop.run() cannot be called from a running event loop")
    if _sys.version_info >= (3, 12):
        return _asyncio.run(_on_ringloop(), loop_factory=loop_factory, debug=debug, **run_kwargs)
    with _asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
        return runner.run(_on_ringloop())


# The policy API: deprecated by asyncio from Python 3.14 (install() warns from 3.12, as uvloop's
# does) and gone from 3.16, where these names are not provided.
if _sys.version_info < (3, 16):
    __all__ += ("EventLoopPolicy", "install")

    def _policy_base() -> type:
        if _sys.version_info >= (3, 14):
            # The policy machinery without the deprecated public aliases.
            base = getattr(_asyncio.events, "_BaseDefaultEventLoopPolicy", None)
            if base is not None:
                return base
        # The Unix default policy: it also provides the child watchers 3.11-3.13 use.
        return _asyncio.unix_events._UnixDefaultEventLoopPolicy

    class EventLoopPolicy(_policy_base()):  # type: ignore[misc]
        """An asyncio policy whose loops are :class:`ringloop.Loop`.

        >>> asyncio.set_event_loop_policy(ringloop.EventLoopPolicy())
        """

        def _loop_factory(self) -> Loop:
            return Loop()

        def new_event_loop(self) -> Loop:
            return Loop()

    def install() -> None:
        """Sets :class:`EventLoopPolicy` as asyncio's policy (deprecated: use :func:`run`)."""
        if _sys.version_info >= (3, 12):
            _warnings.warn(
                "ringloop.install() is deprecated in favor of ringloop.run() starting with "
                "Python 3.12.",
                DeprecationWarning,
                stacklevel=2,
            )
        _asyncio.set_event_loop_policy(EventLoopPolicy())
