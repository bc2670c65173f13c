"""Middleware: the layers between the client and the provider.

A middleware receives the request and ``call_next``, the rest of the chain. It may answer by
itself (a cache hit), call ``call_next`` once (a limiter), several times (retry) or with another
request (fallback). Two forms:

* request-only: override ``on_request(request) -> Request``. The chain applies it on both paths
  (whole and streamed) before the rest of the chain; return ``request.replace(...)`` to rewrite.
* full: override ``ahandle`` (or the sync ``handle``) and ``ahandle_stream``.

A middleware is never skipped silently: one that implements one path but not the other makes
building the Client fail (:func:`check_paths`), unless it declares ``applies_to = ("whole",)``
(or ``("stream",)``), in which case the other path passes by it untouched, by declaration.

Embeddings (``client.embed``) take the chain too, but only through the middleware that declare
``"embeddings"`` in ``applies_to`` (cache, retry, ratelimit, fallback, circuit do). Those get
``ahandle_embed``, which by default is ``ahandle`` with ``request.operation == "embeddings"``
(right for a middleware that only passes the request on and looks at errors); override it when
the meaning differs (the cache stores one entry per text). An ``embed()`` call is split into
batches of the provider's ``embed_batch_size`` just above the first middleware whose
``embed_scope`` is ``"batch"`` (the default: retry, ratelimit, circuit, fallback act per upstream
call); middleware listed before it with ``embed_scope = "call"`` (the cache) see the whole call.
A middleware that does not list ``"embeddings"`` understands chat only: embeddings pass by it,
by declaration, and ``modelwire plugins`` lists it as ``operations: chat``. See docs/embeddings.md.

A middleware written against a blocking library may implement the sync ``handle`` instead of
``ahandle``: it then runs in a worker thread with a blocking ``call_next``. Streams have no sync
twin: the sync client drives the same async chain (see :mod:`modelwire.portal`).
"""

from __future__ import annotations

import asyncio
import difflib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any, ClassVar, cast

from pydantic import BaseModel

from .config import validate_section
from .errors import ConfigurationError, PluginError, RequestValidationError
from .provider import StreamSettings
from .types import Chunk, Completion, Embeddings, Request

__all__ = [
    "EMBEDDINGS",
    "PATHS",
    "CallNext",
    "CallNextEmbed",
    "CallNextStream",
    "Middleware",
    "MiddlewareContext",
    "aclose_stream",
    "build_chain",
    "build_embed_chain",
    "check_options",
    "check_paths",
    "operations",
]

#: The two paths a request can take through the chain.
PATHS = ("whole", "stream")

CallNext = Callable[[Request], Coroutine[Any, Any, Completion]]
CallNextStream = Callable[[Request], AsyncIterator[Chunk]]
CallNextEmbed = Callable[[Request], Coroutine[Any, Any, Embeddings]]

#: The ``applies_to`` entry of a middleware that handles ``client.embed`` requests too.
EMBEDDINGS = "embeddings"


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
    #: pydantic model of its per-call ``options={"<name>": {...}}``, or None (takes none). The
    #: client validates them before any network call; unknown keys are refused.
    Options: ClassVar[type[BaseModel] | None] = None
    #: The paths this middleware acts on. Declare ``("whole",)`` for a middleware that has
    #: nothing to do on streams (they then pass by it untouched), ``("stream",)`` for the reverse.
    #: Add ``"embeddings"`` when it handles embeddings requests (see :meth:`ahandle_embed`);
    #: without it, the middleware is declared chat-only and embeddings pass by it.
    applies_to: ClassVar[tuple[str, ...]] = PATHS
    #: For embeddings: ``"batch"`` (each upstream request, after the call is split into batches)
    #: or ``"call"`` (the whole ``embed()`` call, before the split; honoured only while every
    #: middleware listed before it is ``"call"`` too, else it sees batches).
    embed_scope: ClassVar[str] = "batch"

    def __init__(self, config: Any, context: MiddlewareContext) -> None:
        self.config = config
        self.context = context

    async def on_request(self, request: Request) -> Request:
        """Look at or rewrite the request before the rest of the chain, on both paths.

        Return the request, or a new one from ``request.replace(...)``; raise a
        :class:`~modelwire.ModelwireError` (e.g. ``RequestValidationError``) to refuse it.
        Runs before ``ahandle``/``ahandle_stream``, which then receive what it returned.
        """
        return request

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

    async def ahandle_embed(self, request: Request, call_next: CallNextEmbed) -> Embeddings:
        """Handle an embeddings request (``request.operation == "embeddings"``, texts in
        ``request.params["input"]``); called only when ``applies_to`` lists ``"embeddings"``.

        The default runs :meth:`ahandle` (or the sync ``handle``) with the embeddings request: what
        ``call_next`` returns, an :class:`~modelwire.Embeddings`, comes back through it unchanged.
        """
        response = await self.ahandle(request, cast(CallNext, call_next))
        return cast(Embeddings, response)

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


def _overrides(cls: type[Any], method: str) -> bool:
    return getattr(cls, method, None) is not getattr(Middleware, method)


def check_paths(name: str, cls: type[Any], origin: str = "?") -> None:
    """Refuse a middleware that would be skipped silently on one path.

    :raises ConfigurationError: naming the middleware, its plugin and the method it lacks.
    """
    applies = tuple(getattr(cls, "applies_to", PATHS))
    who = f"middleware {name!r} ({cls.__qualname__} from plugin {origin})"
    if not applies or set(applies) - {*PATHS, EMBEDDINGS}:
        raise ConfigurationError(
            f"{who}: applies_to must name 'whole', 'stream' and/or 'embeddings', got {applies!r}"
        )
    whole = _overrides(cls, "ahandle") or _overrides(cls, "handle")
    stream = _overrides(cls, "ahandle_stream")
    if "stream" in applies and whole and not stream:
        has, lacks, skipped, other = "ahandle/handle", "ahandle_stream", "streamed requests", "whole"
    elif "whole" in applies and stream and not whole:
        has, lacks, skipped, other = "ahandle_stream", "ahandle (or handle)", "whole requests", "stream"
    else:
        return
    raise ConfigurationError(
        f"{who} implements {has} but not {lacks}: {skipped} would pass by it unseen. Implement "
        f"{lacks}, or put request changes in on_request (applied on both paths), or declare "
        f"applies_to = ({other!r},) if {skipped} may pass through it unchanged"
    )


def build_chain(
    middleware: Sequence[tuple[str, Middleware]], call: CallNext, call_stream: CallNextStream
) -> tuple[CallNext, CallNextStream]:
    """Wrap ``call``/``call_stream`` (the provider step) in ``middleware``, first = outermost,
    each on the paths it ``applies_to``, with its ``on_request`` applied first when it has one."""
    for name, mw in reversed(middleware):
        paths = type(mw).applies_to
        on_request = mw.on_request if _overrides(type(mw), "on_request") else None
        if "whole" in paths:
            call = (
                functools.partial(mw.ahandle, call_next=call)
                if on_request is None
                else functools.partial(_whole_step, name, on_request, mw.ahandle, call)
            )
        if "stream" in paths:
            call_stream = (
                functools.partial(mw.ahandle_stream, call_next=call_stream)
                if on_request is None
                else functools.partial(_stream_step, name, on_request, mw.ahandle_stream, call_stream)
            )
    return call, call_stream


def operations(cls: type[Any]) -> list[str]:
    """What a middleware class handles, as ``modelwire plugins`` shows it: ``chat`` (when it
    applies to a chat path) and ``embeddings`` (when declared)."""
    applies = tuple(getattr(cls, "applies_to", PATHS))
    return [op for op, on in (("chat", bool(set(applies) & set(PATHS))), (EMBEDDINGS, EMBEDDINGS in applies)) if on]


def build_embed_chain(
    middleware: Sequence[tuple[str, Middleware]],
    call: CallNextEmbed,
    split: Callable[..., Coroutine[Any, Any, Embeddings]],
) -> CallNextEmbed:
    """The embeddings chain: ``call`` wrapped in the middleware that declare ``"embeddings"``,
    first = outermost, each with its ``on_request`` applied first when it has one; ``split``
    (which sends a whole call as batches) sits above the first ``embed_scope = "batch"`` one."""
    applying = [(name, mw) for name, mw in middleware if EMBEDDINGS in type(mw).applies_to]
    cut = next((i for i, (_, mw) in enumerate(applying) if type(mw).embed_scope != "call"), len(applying))
    for position in range(len(applying), -1, -1):
        if position == cut:
            call = functools.partial(split, call_next=call)
        if position == 0:
            break
        name, mw = applying[position - 1]
        on_request = mw.on_request if _overrides(type(mw), "on_request") else None
        call = (
            functools.partial(mw.ahandle_embed, call_next=call)
            if on_request is None
            else functools.partial(_embed_step, name, on_request, mw.ahandle_embed, call)
        )
    return call


async def _embed_step(
    name: str, on_request: Callable[[Request], Any], handle: Callable[..., Any], call_next: CallNextEmbed,
    request: Request,
) -> Embeddings:
    changed = await _prepared(name, on_request, request)
    try:
        response: Embeddings = await handle(changed, call_next)
        return response
    finally:
        request.attempt = changed.attempt


async def _prepared(name: str, on_request: Callable[[Request], Any], request: Request) -> Request:
    changed = await on_request(request)
    if not isinstance(changed, Request):
        raise PluginError(f"middleware {name!r}: on_request must return a Request, got {type(changed).__name__}")
    return changed


async def _whole_step(
    name: str, on_request: Callable[[Request], Any], handle: Callable[..., Any], call_next: CallNext, request: Request
) -> Completion:
    changed = await _prepared(name, on_request, request)
    try:
        response: Completion = await handle(changed, call_next)
        return response
    finally:
        request.attempt = changed.attempt  # observers get the caller's request: keep its attempt true


async def _stream_step(
    name: str,
    on_request: Callable[[Request], Any],
    handle_stream: Callable[..., AsyncIterator[Chunk]],
    call_next: CallNextStream,
    request: Request,
) -> AsyncIterator[Chunk]:
    changed = await _prepared(name, on_request, request)
    upstream = handle_stream(changed, call_next)
    try:
        async for chunk in upstream:
            request.attempt = changed.attempt
            yield chunk
    finally:
        request.attempt = changed.attempt
        await aclose_stream(upstream)


def check_options(options: Any, middleware: Mapping[str, type[Any]], provider_config: Any) -> None:
    """Validate per-call ``options`` before any network call: each key names a registered
    middleware (or ``stream``), and its dict is checked with that middleware's ``Options``.

    :raises RequestValidationError: naming ``options.<middleware>.<key>``.
    """
    if options is None:
        return
    if not isinstance(options, dict):
        kind = type(options).__name__
        raise RequestValidationError(f"options must be a dict keyed by middleware name, got {kind}")
    for name, value in options.items():
        if name == "stream":
            StreamSettings.resolve(provider_config, options)  # the same check the providers make
            continue
        cls = middleware.get(name)
        if cls is None:
            known = sorted({*middleware, "stream"})
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RequestValidationError(
                f"options.{name}: no middleware is registered as {name!r}{hint}; options are keyed by "
                f"middleware name: {', '.join(known)}"
            )
        model = getattr(cls, "Options", None)
        if model is None:
            raise RequestValidationError(f"options.{name}: middleware {name!r} takes no per-call options")
        if not isinstance(value, dict):
            allowed = ", ".join(model.model_fields)
            raise RequestValidationError(
                f"options.{name} must be a dict of {name} options ({allowed}), got {type(value).__name__}"
            )
        validate_section(model, value, f"options.{name}", RequestValidationError, "option")
