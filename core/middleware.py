"""Middleware: the layers between the client and the provider.

A middleware receives the request and ``call_next``, the rest of the chain. It may answer by
itself (a cache hit), call ``call_next`` once (a limiter), several times (retry) or with another
request (fallback). Implement ``ahandle`` and ``ahandle_stream``; the defaults pass through.

A middleware written against a blocking library may implement the sync ``handle`` instead of
``ahandle``: it then runs in a worker thread with a blocking ``call_next``. Streams have no sync
twin: the sync client drives the same async chain (see :mod:`modelwire.portal`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ClassVar

from pydantic import BaseModel

from .types import Chunk, Completion, Request

__all__ = ["CallNext", "CallNextStream", "Middleware", "MiddlewareContext", "aclose_stream"]

CallNext = Callable[[Request], Coroutine[Any, Any, Completion]]
CallNextStream = Callable[[Request], AsyncIterator[Chunk]]


class MiddlewareContext:
    """What a middleware may use from the client that built it.

    :ivar hook: the plugin manager's hook relay (``hook.modelwire_cache_key(request=...)``).
    :ivar providers: provider instances by name, read-only by convention.
    :ivar provider: ``provider(name)`` resolves a name like the client does (a registered kind
        that is not configured gets an instance with defaults; unknown names raise
        :class:`~modelwire.UnknownProviderError`).
    """

    def __init__(self, hook: Any, providers: dict[str, Any], provider: Callable[[str], Any] | None = None) -> None:
        self.hook = hook
        self.providers = providers
        self.provider = provider or providers.__getitem__


class Middleware:
    """Base class of middleware.

    :param config: the validated section named like the middleware (``Config`` instance), or
        None when the class declares no ``Config``.
    :param context: see :class:`MiddlewareContext`.
    """

    #: pydantic model of the middleware's top-level config section, or None.
    Config: ClassVar[type[BaseModel] | None] = None

    def __init__(self, config: Any, context: MiddlewareContext) -> None:
        self.config = config
        self.context = context

    def handle(self, request: Request, call_next: Callable[[Request], Completion]) -> Completion:
        return call_next(request)

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        if type(self).handle is Middleware.handle:
            return await call_next(request)
        loop = asyncio.get_running_loop()

        def blocking_next(req: Request) -> Completion:
            return asyncio.run_coroutine_threadsafe(call_next(req), loop).result()

        return await asyncio.to_thread(self.handle, request, blocking_next)

    def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        return call_next(request)

    async def aclose(self) -> None:
        """Release resources (connections, threads) when the client closes."""

    def describe(self) -> dict[str, Any]:
        """State shown by ``modelwire plugins`` (counters, circuit state...)."""
        return {}


async def aclose_stream(stream: AsyncIterator[Any]) -> None:
    """Close a stream from the rest of the chain, and with it the upstream connection.

    Middleware call this in a ``finally`` around ``call_next(request)`` streams they stop
    reading early; iterators without ``aclose`` are left alone.
    """
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
