"""Stream objects returned by ``Client.astream`` and ``Client.stream``.

A stream either ends with a finish_reason (or ``[DONE]``) or raises: an interrupted stream raises
:class:`~modelwire.StreamInterruptedError` (or a subclass, or the mapped provider error) after the
chunks that did arrive, and the error carries what the caller received (``partial_text``,
``chunks``, ``usage_known``, ``partial_tool_calls``). Memory per chunk is O(1) beyond the
accumulated text: chunks are not kept.

Closing (``aclose``/``close``, leaving the ``with`` block, garbage collection) or cancelling the
consuming task closes the upstream response, which frees its pooled connection. Every stream end
fires ``modelwire_stream_end`` once (the logging plugin turns it into one ``llm.stream_end``
event); a successful end also fires ``modelwire_response_received`` with the assembled
:class:`Completion`.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import portal, structured
from .errors import (
    ContentFilterError,
    ModelwireError,
    ProviderError,
    StreamInterruptedError,
    StructuredOutputError,
)
from .middleware import aclose_stream
from .types import Chunk, Completion, Request, ToolCall, Usage

if TYPE_CHECKING:
    from .client import Client

__all__ = ["AsyncStream", "SyncStream"]


class _ToolCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments = io.StringIO()

    def as_call(self, complete: bool = True) -> ToolCall:
        return ToolCall(self.id or "", self.name or "", self.arguments.getvalue(), complete=complete)


class _Choice:
    """One choice being assembled; text in a StringIO, so no per-chunk string objects are kept."""

    __slots__ = ("finish_reason", "text", "tool_calls")

    def __init__(self) -> None:
        self.text = io.StringIO()
        self.tool_calls: dict[int, _ToolCall] = {}
        self.finish_reason: str | None = None

    def calls(self, complete: bool = True) -> list[ToolCall]:
        return [call.as_call(complete) for _, call in sorted(self.tool_calls.items())]


class AsyncStream:
    """An async iterator of :class:`Chunk`, and a context manager that closes the upstream.

    While iterating it keeps the text of each choice (``stream.text`` is choice 0), finish
    reasons, the latest usage (cumulative, so the last value is the total) and the assembled tool
    calls; after a successful end :meth:`get_final_completion` returns them as a
    :class:`Completion`.

    >>> async with client.astream("Tell a story", model="local/llama3") as stream:  # doctest: +SKIP
    ...     async for chunk in stream:
    ...         print(chunk.text, end="")
    >>> stream.get_final_completion().usage  # doctest: +SKIP

    :ivar chunks: chunks received so far.
    :ivar usage: the provider's usage, None while unknown (never estimated); see :attr:`usage_known`.
    :ivar metadata: provider extras seen in the stream (Azure ``prompt_filter_results``,
        ``content_filter_results``...), the latest value per key.
    :ivar first_token_latency: seconds from the first ``__anext__`` to the first text or tool call.
    :ivar end_reason: None while open; then the finish reason, ``done`` ([DONE] without one),
        ``interrupted``, ``content_filter``, ``error``, ``cancelled`` or ``cancelled_by_consumer``.
    """

    def __init__(self, client: Client, request: Request, chunks: AsyncIterator[Chunk]) -> None:
        self.request = request
        self._client = client
        self._chunks = chunks
        self._choices: dict[int, _Choice] = {}
        self._observe = bool(client.hook.modelwire_stream_chunk.get_hookimpls())
        self._start: float | None = None
        self.first_token_latency: float | None = None
        self.usage: Usage | None = None
        self.metadata: dict[str, Any] = {}
        self.cached = False
        self.chunks = 0
        self.end_reason: str | None = None
        #: Set by :meth:`SyncStream.close` from another thread before it cancels the pending read.
        self._stop_requested = False
        self._final: dict[int, Completion] | None = None
        #: Choices whose text did not parse as the requested ``response_format`` (docs/tools.md).
        self._unparsed: dict[int, StructuredOutputError] = {}

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Chunk:
        if self.end_reason is not None:
            raise StopAsyncIteration
        if self._start is None:
            self._start = perf_counter()
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        except ModelwireError as exc:
            self._fail(exc)
            raise
        except asyncio.CancelledError:
            self._end("cancelled_by_consumer" if self._stop_requested else "cancelled")
            raise
        except Exception as exc:
            error = ProviderError(
                f"unexpected {type(exc).__name__} in the stream pipeline: {exc}",
                provider=self.request.provider,
                model=self.request.model,
            )
            self._fail(error)
        except BaseException:
            self._end("cancelled")
            raise
        else:
            return self._received(chunk)
        raise error  # outside the handler: the foreign exception stays unreachable from the error

    def _received(self, chunk: Chunk) -> Chunk:
        self.chunks += 1
        choice = self._choices.get(chunk.index)
        if choice is None:
            choice = self._choices[chunk.index] = _Choice()
        if chunk.text:
            choice.text.write(chunk.text)
            if self.first_token_latency is None and self._start is not None:
                self.first_token_latency = perf_counter() - self._start
        if chunk.tool_calls:
            self._add_tool_calls(choice, chunk)
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.metadata:
            self.metadata.update(chunk.metadata)
        if chunk.cached:
            self.cached = True
        if self._observe:
            self._client.notify(self._client.hook.modelwire_stream_chunk, request=self.request, chunk=chunk)
        return chunk

    def _add_tool_calls(self, choice: _Choice, chunk: Chunk) -> None:
        if self.first_token_latency is None and self._start is not None:
            self.first_token_latency = perf_counter() - self._start
        for delta in chunk.tool_calls:
            call = choice.tool_calls.get(delta.index)
            if call is None:
                call = choice.tool_calls[delta.index] = _ToolCall()
            call.id = delta.id or call.id
            call.name = delta.name or call.name
            if delta.arguments:
                call.arguments.write(delta.arguments)

    # -- what has arrived ------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text of choice 0 received so far."""
        return self.choice_text(0)

    def choice_text(self, index: int) -> str:
        """The text of choice ``index`` (``n > 1``) received so far."""
        choice = self._choices.get(index)
        return choice.text.getvalue() if choice is not None else ""

    @property
    def finish_reason(self) -> str | None:
        """Choice 0's finish reason, once it arrived."""
        choice = self._choices.get(0)
        return choice.finish_reason if choice is not None else None

    @property
    def usage_known(self) -> bool:
        """Whether the provider reported usage; False means :attr:`usage` is None, not zero."""
        return self.usage is not None

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Choice 0's tool calls assembled so far (complete only after a successful end)."""
        choice = self._choices.get(0)
        return choice.calls() if choice is not None else []

    def completion(self, index: int = 0) -> Completion:
        """The whole completion of choice ``index`` (text, assembled tool calls, usage,
        finish_reason, and ``parsed`` for a ``response_format`` request); only after the stream
        ended successfully. A plain method on both stream kinds: nothing is left to wait for.

        :raises ModelwireError: when the stream has not ended successfully (an interrupted
            stream raised its error while being iterated; it carries the partial tool calls).
        :raises StructuredOutputError: when the text does not parse as the ``response_format``.
        """
        final = self.get_final_completion(index)
        if index in self._unparsed:
            raise self._unparsed[index]
        return final

    def get_final_completion(self, index: int = 0) -> Completion:
        """The whole completion of choice ``index``; only after the stream ended successfully.
        Unlike :meth:`completion` it does not raise when the text fails its ``response_format``
        (``parsed`` is then None)."""
        if self._final is None:
            raise ModelwireError(
                "the stream has not finished successfully: iterate it to the end first"
                + (f" (it ended: {self.end_reason})" if self.end_reason else "")
            )
        if index not in self._final:
            raise ModelwireError(f"the stream has no choice {index} (choices: {sorted(self._final)})")
        return self._final[index]

    def get_final_completions(self) -> list[Completion]:
        """One completion per choice, by index (``n > 1``)."""
        final = self._final
        if final is None:
            self.get_final_completion()  # raises with the reason
            return []
        return [final[i] for i in sorted(final)]

    # -- ends ------------------------------------------------------------------------------------

    def _completion(self, index: int, choice: _Choice) -> Completion:
        # a fallback may have served the stream from another target (see Request.state)
        provider, model = self.request.state.get("served_by", (self.request.provider, self.request.model))
        return Completion(
            text=choice.text.getvalue(),
            finish_reason=choice.finish_reason,
            model=model,
            provider=provider,
            usage=self.usage,
            tool_calls=choice.calls(),
            cached=self.cached,
        )

    def _finish(self) -> None:
        if self._final is not None:
            return
        choices = self._choices or {0: _Choice()}
        self._final = {i: self._completion(i, c) for i, c in sorted(choices.items())}
        for i, completion in self._final.items():
            try:
                structured.apply(self.request, completion)
            except StructuredOutputError as exc:  # raised by completion(): the text itself streamed fine
                self._unparsed[i] = exc
        final = self._final[min(self._final)]
        self._end(final.finish_reason or "done", response=final)

    def _fail(self, exc: ModelwireError) -> None:
        if isinstance(exc, ProviderError):
            exc.partial_text = self.text
            exc.chunks = self.chunks
            exc.usage_known = self.usage_known
            choice = self._choices.get(0)
            exc.partial_tool_calls = tuple(choice.calls(complete=False) if choice is not None else [])
        if isinstance(exc, StreamInterruptedError):
            reason = "interrupted"
        elif isinstance(exc, ContentFilterError):
            reason = "content_filter"
        else:
            reason = "error"
        self._end(reason, error=exc)

    def _end(self, reason: str, *, error: BaseException | None = None, response: Completion | None = None) -> None:
        """Record the end once and tell the observers."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        latency = perf_counter() - self._start if self._start is not None else 0.0
        hook = self._client.hook
        if response is not None:
            # A successful end is logged once, as the response event: give it the stream's figures.
            first = self.first_token_latency
            log = self.request.state.setdefault("log", {})
            log.update(
                stream_reason=reason,
                chunks=self.chunks,
                first_token_ms=round(first * 1000, 2) if first is not None else None,
                usage_known=self.usage is not None,
            )
            self._client.notify(
                hook.modelwire_response_received, request=self.request, response=response, latency=latency
            )
        self._client.notify(
            hook.modelwire_stream_end,
            request=self.request,
            reason=reason,
            chunks=self.chunks,
            first_token_latency=self.first_token_latency,
            latency=latency,
            usage=self.usage,
            cached=self.cached,
            error=error,
        )

    async def aclose(self) -> None:
        """Stop early: closes the upstream response and frees its connection. Idempotent."""
        if self._start is not None:
            self._end("cancelled_by_consumer")
        else:
            self.end_reason = self.end_reason or "cancelled_by_consumer"
        await aclose_stream(self._chunks)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped mid-way: report the end; the pipeline's async generators are closed by the
        # event loop's async-generator finalizer, which closes the upstream response.
        if self.end_reason is None and self._start is not None:
            try:
                self._end("cancelled_by_consumer")
            except Exception:
                pass


class SyncStream:
    """The blocking twin of :class:`AsyncStream`: each ``next()`` pulls one chunk from the
    upstream (a real stream, not a buffered one), on modelwire's background loop; usable from any
    thread, including while another event loop runs."""

    def __init__(self, stream: AsyncStream) -> None:
        self._stream = stream
        self._closing = False
        # The portal-loop task of a next() in flight: close() from another thread cancels it,
        # since an async generator that is running cannot be closed (RuntimeError).
        self._task: asyncio.Task[Any] | None = None

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Chunk:
        if self._closing:
            raise StopIteration
        try:
            return portal.run(self._next())
        except StopAsyncIteration:
            raise StopIteration from None

    async def _next(self) -> Chunk:
        if self._closing:  # close() ran between the check in __next__ and this step on the loop
            raise StopAsyncIteration
        self._task = asyncio.current_task()
        try:
            return await self._stream.__anext__()
        except asyncio.CancelledError:
            if self._closing:  # our own close(): the stream ends, its end_reason says why
                raise StopAsyncIteration from None
            raise
        finally:
            self._task = None

    @property
    def stream(self) -> AsyncStream:
        """The underlying :class:`AsyncStream` (counters, metadata)."""
        return self._stream

    @property
    def request(self) -> Request:
        return self._stream.request

    @property
    def text(self) -> str:
        return self._stream.text

    def choice_text(self, index: int) -> str:
        return self._stream.choice_text(index)

    @property
    def finish_reason(self) -> str | None:
        return self._stream.finish_reason

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    @property
    def usage_known(self) -> bool:
        return self._stream.usage_known

    @property
    def chunks(self) -> int:
        return self._stream.chunks

    @property
    def end_reason(self) -> str | None:
        return self._stream.end_reason

    @property
    def first_token_latency(self) -> float | None:
        return self._stream.first_token_latency

    @property
    def metadata(self) -> dict[str, Any]:
        return self._stream.metadata

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self._stream.tool_calls

    def completion(self, index: int = 0) -> Completion:
        return self._stream.completion(index)

    def get_final_completion(self, index: int = 0) -> Completion:
        return self._stream.get_final_completion(index)

    def get_final_completions(self) -> list[Completion]:
        return self._stream.get_final_completions()

    def close(self) -> None:
        """Stop early: closes the upstream response and frees its connection. Idempotent.

        Safe from any thread: a ``next()`` blocked in another thread ends with ``StopIteration``
        (``end_reason`` is ``cancelled_by_consumer``) instead of waiting for the idle timeout.
        """
        self._closing = True
        portal.run(self._aclose())

    async def _aclose(self) -> None:
        task = self._task  # read on the loop, where _next sets it: no race with a starting read
        if task is not None and not task.done() and task is not asyncio.current_task():
            self._stream._stop_requested = True
            task.cancel()
            await asyncio.wait({task})
        await self._stream.aclose()

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
