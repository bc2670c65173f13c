"""The shared shape of the observability middleware (``otel``, ``prometheus``): one logical request
in, one :class:`Outcome` out.

An :class:`ObservingMiddleware` sits first in ``middleware`` (outermost), so it sees every logical
request once, whatever the layers inside it do: a cache hit, several retry attempts, a fallback.
Subclasses implement :meth:`~ObservingMiddleware.begin` (called as the request enters) and
:meth:`~ObservingMiddleware.finish` (called once as it ends: answer, error, cancellation, or a
stream closed by its consumer). What happens in between (attempts, retry delays, limiter waits)
reaches them through the observer hooks, correlated by a key of their own in ``request.state``.

Nothing here imports an observability library: each subclass imports its own when it is built,
so an installed but unlisted plugin costs no import.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from modelwire.log import logger
from modelwire.middleware import CallNext, CallNextStream, Middleware, aclose_stream
from modelwire.types import Chunk, Completion, Request, Usage

__all__ = ["ObservingMiddleware", "Outcome", "error_type", "served_target"]


def error_type(error: BaseException) -> str:
    """The low-cardinality name of what ended a request: the exception's class name
    (``RateLimitError``, ``StreamInterruptedError``, ``CancelledError``); never its message,
    which may quote the prompt (context-window and content-filter errors do)."""
    return type(error).__name__


def served_target(request: Request) -> tuple[str, str]:
    """``(provider, model)`` that answered: a fallback records it in ``state["served_by"]``."""
    served = request.state.get("served_by")
    if served:
        return str(served[0]), str(served[1])
    return request.provider, request.model


@dataclass(slots=True)
class Outcome:
    """How one logical request ended.

    :ivar duration: seconds from entering the middleware to the end (a stream: to its last chunk).
    :ivar response: the completion of a whole request; None for streams and failures.
    :ivar error: the exception that ended it (``CancelledError`` included), None otherwise.
    :ivar end_reason: the finish reason, ``done`` (no finish reason), ``error``, ``cancelled`` or
        ``cancelled_by_consumer`` (a stream closed or dropped before its end).
    :ivar first_chunk: seconds to the first chunk of a stream, None for whole requests.
    :ivar text: the answer's text (choice 0), only when the subclass asked for it (``capture_text``).
    """

    request: Request
    duration: float
    stream: bool
    response: Completion | None = None
    error: BaseException | None = None
    end_reason: str = "done"
    finish_reasons: list[str] = field(default_factory=list)
    usage: Usage | None = None
    cached: bool = False
    first_chunk: float | None = None
    text: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end_reason != "cancelled_by_consumer"


class ObservingMiddleware(Middleware):
    """Base of middleware that watch each logical request from its start to its end."""

    #: Set to True to receive the stream's text in :attr:`Outcome.text` (costs a buffer per stream).
    capture_text = False

    def begin(self, request: Request) -> Any:
        """The request enters; return a handle given back to :meth:`finish` (a span, a timer)."""
        return None

    def enter(self, handle: Any) -> Any:
        """Called around each await of the rest of the chain (the whole call, each stream read):
        make ``handle`` current for code below (an OTel context). Return what :meth:`leave` needs."""
        return None

    def leave(self, token: Any) -> None:
        """Undo :meth:`enter`."""

    def first_chunk(self, handle: Any, request: Request, seconds: float) -> None:
        """A stream's first chunk arrived ``seconds`` after the request entered."""

    def finish(self, handle: Any, outcome: Outcome) -> None:
        """The request ended; called exactly once per :meth:`begin`."""

    # -- the two paths ---------------------------------------------------------------------------

    def _safe(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except Exception as exc:  # observability must never fail or alter a request
            logger.error("observer_failed", middleware=type(self).__name__, error=repr(exc))
            return None

    async def ahandle(self, request: Request, call_next: CallNext) -> Completion:
        handle = self._safe(self.begin, request)
        start = perf_counter()
        token = self._safe(self.enter, handle)
        try:
            response = await call_next(request)
        except BaseException as exc:
            self._safe(self.leave, token)
            ended = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            self._safe(self.finish, handle, Outcome(request, perf_counter() - start, False, error=exc,
                                                    end_reason=ended))
            raise
        self._safe(self.leave, token)
        reason = response.finish_reason
        outcome = Outcome(request, perf_counter() - start, False, response=response, end_reason=reason or "done",
                          finish_reasons=[reason] if reason else [], usage=response.usage, cached=response.cached,
                          text=response.text if self.capture_text else None)
        self._safe(self.finish, handle, outcome)
        return response

    def ahandle_stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        return self._stream(request, call_next)

    async def _stream(self, request: Request, call_next: CallNextStream) -> AsyncIterator[Chunk]:
        # The generator's body runs on the first read: a stream never iterated is never begun.
        handle = self._safe(self.begin, request)
        start = perf_counter()
        outcome = Outcome(request, 0.0, True)
        finishes: dict[int, str] = {}
        text: list[str] | None = [] if self.capture_text else None
        upstream = call_next(request)
        try:
            while True:
                token = self._safe(self.enter, handle)
                try:
                    chunk = await upstream.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    self._safe(self.leave, token)
                if outcome.first_chunk is None:
                    outcome.first_chunk = perf_counter() - start
                    self._safe(self.first_chunk, handle, request, outcome.first_chunk)
                if chunk.finish_reason is not None:
                    finishes[chunk.index] = chunk.finish_reason
                if chunk.usage is not None:
                    outcome.usage = chunk.usage
                if chunk.cached:
                    outcome.cached = True
                if text is not None and chunk.index == 0 and chunk.text:
                    text.append(chunk.text)
                yield chunk
            outcome.end_reason = finishes[min(finishes)] if finishes else "done"
        except GeneratorExit:  # closed, left or dropped by the consumer: not a failure
            outcome.end_reason = "cancelled_by_consumer"
            raise
        except BaseException as exc:
            outcome.error = exc
            outcome.end_reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            raise
        finally:
            outcome.duration = perf_counter() - start
            outcome.finish_reasons = [finishes[i] for i in sorted(finishes)]
            outcome.text = "".join(text) if text is not None else None
            self._safe(self.finish, handle, outcome)
            await aclose_stream(upstream)
