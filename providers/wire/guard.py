"""The stream guards both routes share: read an SSE body and judge how it ends.

The route opens the response (litellm's request, or the direct route's own); :func:`guarded`
reads its body with the strict SSE decoder (:mod:`.sse`) and event parser (:mod:`.stream_parse`)
and raises a :class:`~modelwire.ModelwireError` for whatever is not a whole answer: a cut stream,
``[DONE]`` without a finish_reason (llama.cpp), an empty 200 stream, an error event, a protocol
fault, a content filter stop.

Timeouts run on the event loop clock and only while waiting for the upstream, so a slow consumer
is never blamed on the server: first token (from the attempt start to the first chunk with
content), idle (between data events once content flows; SSE comments and partial lines do not
count), and a total cap.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from modelwire.errors import (
    ContentFilterError,
    EmptyStreamError,
    StreamDurationExceededError,
    StreamIdleTimeoutError,
    StreamInterruptedError,
    StreamRepetitionError,
)
from modelwire.provider import StreamSettings
from modelwire.types import Chunk

from .sse import SSEDecoder
from .stream_parse import DONE, EventParser

__all__ = ["Clock", "Expired", "Progress", "before", "body_bytes", "finish_attempt", "guarded"]

T = TypeVar("T")

# After [DONE], read the (usually empty) rest of the body this long so the connection can go back
# to the pool instead of being closed; the openai SDK drains the same way.
_DRAIN_SECONDS = 0.1
# Events handled from one read before yielding to the event loop (keeps loop lag low under load).
_EVENTS_PER_TURN = 16


class Expired(Exception):
    """A deadline of :func:`before` passed."""


if sys.version_info >= (3, 11):

    async def before(awaitable: Awaitable[T], deadline: float) -> T:
        """Await ``awaitable`` until ``deadline`` (loop clock, ``inf`` = none); :class:`Expired` after.

        Only a timeout of ours becomes :class:`Expired`; a TimeoutError from inside passes through.
        """
        if deadline == math.inf:
            return await awaitable
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                return await awaitable
        except TimeoutError:
            if timer.expired():
                raise Expired from None
            raise

else:  # pragma: no cover - Python 3.10 has no asyncio.timeout; wait_for costs a task per call

    async def before(awaitable: Awaitable[T], deadline: float) -> T:
        if deadline == math.inf:
            return await awaitable
        delay = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            return await asyncio.wait_for(awaitable, delay)
        except asyncio.TimeoutError:
            raise Expired from None


class Progress:
    """What the stream has carried so far: enough to judge its end, nothing per chunk."""

    __slots__ = (
        "content", "done", "done_is_end", "filtered", "finished", "last_text", "parser", "repeat_limit", "repeats",
        "started",
    )

    def __init__(self, parser: EventParser, settings: StreamSettings) -> None:
        self.parser = parser
        # llama.cpp's server ends a stream it preempts with a bare [DONE]: [DONE] alone proves
        # nothing unless the provider is configured as one that never sends a finish_reason.
        self.done_is_end = settings.accept_done_without_finish_reason
        self.content = False  # a chunk with text, tool call, finish reason or usage arrived
        self.done = False  # [DONE] arrived
        self.filtered = False  # a choice ended with finish_reason content_filter
        self.started: set[int] = set()  # choices that carried content
        self.finished: set[int] = set()  # choices that carried a finish_reason
        self.repeat_limit = settings.stream_repeat_limit
        self.last_text = ""
        self.repeats = 0

    @property
    def empty(self) -> bool:
        """Nothing that makes an answer arrived: no text, tool call or finish_reason."""
        return not self.started and not self.finished

    @property
    def complete(self) -> bool:
        """Every choice that started has a finish_reason (or [DONE] arrived after content, on a
        provider configured with ``accept_done_without_finish_reason``)."""
        if self.finished and self.started <= self.finished:
            return True
        return self.done and self.done_is_end and not self.empty

    def check(self, chunk: Chunk) -> None:
        """Account for ``chunk``; raise for an abort or a loop."""
        if chunk.finish_reason is not None:
            if chunk.finish_reason == "abort":  # vLLM: the server gave up on the request
                raise self.parser.interrupted("the server aborted the generation (finish_reason 'abort')")
            self.finished.add(chunk.index)
            self.content = True
            if chunk.finish_reason == "content_filter":
                self.filtered = True
        if chunk.text or chunk.tool_calls:
            self.started.add(chunk.index)
            self.content = True
        elif chunk.usage is not None:
            self.content = True
        if self.repeat_limit is not None and chunk.index == 0 and chunk.text:
            text = chunk.text
            if len(text) > 2 and text == self.last_text:
                self.repeats += 1
                if self.repeats >= self.repeat_limit:
                    raise self.parser.interrupted(
                        f"the model repeated the same delta {self.repeats} times in a row: {text[:60]!r}",
                        StreamRepetitionError,
                    )
            else:
                self.last_text, self.repeats = text, 1

    def filtered_error(self) -> ContentFilterError:
        """The provider's content filter cut the answer: the text is incomplete (and billed)."""
        p = self.parser
        return ContentFilterError(
            "the provider's content filter stopped the answer mid-stream (finish_reason 'content_filter')",
            provider=p.provider,
            model=p.model,
            request_id=p.request_id,
            status=200,
        )

    def end_error(self) -> StreamInterruptedError:
        """Why an ended stream is not a whole answer."""
        if self.empty:
            # Some servers answer a prompt over their context size this way (docs/streaming.md).
            got = "only [DONE]" if self.done else "no event at all" if not self.content else "only usage"
            return self.parser.interrupted(
                f"the server answered 200 with an empty stream ({got}: no text, tool call or finish_reason); "
                "a local server may do this when the prompt does not fit its context",
                EmptyStreamError,
            )
        if self.done:
            return self.parser.interrupted(
                "the stream ended with [DONE] but no finish_reason: the server cut the answer (llama.cpp does "
                "this when another request preempts the stream); for a server that never sends a "
                "finish_reason, set accept_done_without_finish_reason = true on the provider"
            )
        return self.parser.interrupted("the stream ended without a finish_reason")


class Clock:
    """Deadlines of one attempt on the loop clock."""

    __slots__ = ("first", "idle", "loop", "settings", "total")

    def __init__(self, settings: StreamSettings) -> None:
        self.loop = asyncio.get_running_loop()
        now = self.loop.time()
        self.settings = settings
        self.first = now + settings.first_token_timeout if settings.first_token_timeout else math.inf
        self.total = now + settings.max_stream_duration if settings.max_stream_duration else math.inf
        self.idle = settings.idle_timeout or math.inf

    def deadline(self, content: bool, anchor: float) -> tuple[float, str]:
        """The next deadline and what it is: ``first_token``, ``idle`` or ``total``."""
        when, kind = (anchor + self.idle, "idle") if content else (self.first, "first_token")
        return (self.total, "total") if self.total <= when else (when, kind)

    def error(self, kind: str, parser: EventParser) -> StreamInterruptedError:
        s = self.settings
        if kind == "total":
            return parser.interrupted(
                f"the stream exceeded max_stream_duration = {s.max_stream_duration} s", StreamDurationExceededError
            )
        if kind == "first_token":
            return parser.interrupted(
                f"no first token within first_token_timeout = {s.first_token_timeout} s", StreamIdleTimeoutError
            )
        return parser.interrupted(f"no data for idle_timeout = {s.idle_timeout} s", StreamIdleTimeoutError)


async def guarded(body: AsyncIterator[bytes], clock: Clock, progress: Progress) -> AsyncGenerator[Chunk, None]:
    """The chunks of an SSE ``body``; raises a :class:`~modelwire.ModelwireError` for any fault.

    The caller closes ``body`` (and the response behind it) whatever happens.
    """
    parser = progress.parser
    decoder = SSEDecoder()
    loop = clock.loop
    anchor = loop.time()
    fresh = False
    while True:
        now = loop.time()
        if fresh:  # the idle clock restarts when we start waiting after a data event
            anchor, fresh = now, False
        deadline, kind = clock.deadline(progress.content, anchor)
        if deadline <= now:
            if progress.complete:
                break
            raise clock.error(kind, parser)
        ended = False
        try:
            try:
                data = await before(body.__anext__(), deadline)
            except Expired:
                if progress.complete:
                    break  # only the usage chunk or [DONE] is missing: the text is whole
                raise clock.error(kind, parser) from None
            events = decoder.feed(data)
        except StopAsyncIteration:
            ended = True
            events = _finish(decoder, progress)
        except StreamInterruptedError:
            raise
        except Exception as exc:
            if progress.complete:
                break
            raise _broken(exc, parser) from None
        for position, event in enumerate(events, 1):
            fresh = True
            if position % _EVENTS_PER_TURN == 0:
                # One read can carry hundreds of buffered events, and the consumer takes them
                # without suspending: give the other streams on this loop a turn.
                await asyncio.sleep(0)
            chunks = parser.parse(event.data, event.event)
            if chunks is DONE:
                progress.done = True
                break
            for chunk in chunks:
                progress.check(chunk)
                yield chunk
        if decoder.error is not None and not progress.done:
            raise parser.protocol_error(str(decoder.error))
        if progress.done:
            if not progress.complete:
                raise progress.end_error()
            await _drain(body)
            break
        if ended:
            if progress.complete:
                break
            raise progress.end_error()
    if progress.filtered:
        raise progress.filtered_error()


def _finish(decoder: SSEDecoder, progress: Progress) -> list[Any]:
    """Events left at the end of the body; a cut event is an interruption, not a protocol fault."""
    events = decoder.finish()
    for event in events:
        if not event.data.startswith("[DONE]"):
            try:
                progress.parser.parse(event.data, event.event)
            except StreamInterruptedError:
                if progress.complete:
                    return []
                raise progress.parser.interrupted("the stream ended in the middle of an event") from None
    return events


def _broken(exc: Exception, parser: EventParser) -> StreamInterruptedError:
    """A transport failure while reading the body (reset, FIN without terminator, read timeout)."""
    name = type(exc).__name__
    cls = StreamIdleTimeoutError if "Timeout" in name else StreamInterruptedError
    return parser.interrupted(f"the connection broke mid-stream: {name}: {exc}", cls)


async def _drain(body: Any) -> None:
    async def consume() -> None:
        async for _ in body:
            pass

    try:
        await before(consume(), asyncio.get_running_loop().time() + _DRAIN_SECONDS)
    except Exception:  # a late fault cannot change a stream that already said [DONE]
        pass


async def finish_attempt(
    clean: bool, discard: Callable[[], Awaitable[Any]], close: Callable[[], Awaitable[Any]] | None
) -> None:
    """End one stream attempt, whichever route opened it: unless it ended ``clean``, ``discard``
    its connection first (closed before ``close`` hands the response back to the pool); ``close``
    runs whatever happens."""
    try:
        if not clean:
            await discard()
    finally:
        if close is not None:
            await close()


def body_bytes(response: Any) -> AsyncIterator[bytes]:
    """The body of an httpx ``response``, read so that its connection stays ours until it is closed.

    ``aiter_bytes()`` releases the connection to the pool the moment the body ends, before the
    stream guards have judged that end: a stream that ended without a whole answer then could no
    longer discard its connection (the server may be closing it), and the next request was sent
    there. The raw stream leaves releasing to ``response.aclose()``. A compressed body still needs
    httpx's decoding.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    raw = getattr(response, "stream", None)
    if encoding in ("", "identity") and raw is not None and hasattr(raw, "__aiter__"):
        return raw.__aiter__()  # type: ignore[no-any-return]
    return response.aiter_bytes()  # type: ignore[no-any-return]
