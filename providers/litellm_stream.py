"""Streaming through litellm without believing what litellm reports about a broken stream.

Decision (see docs/streaming.md, "How a stream is read"): litellm makes the request (URL, auth,
Azure routing, its pooled aiohttp transport, HTTP error mapping before the first byte), and
modelwire reads the body of the response litellm opened, with its own strict SSE decoder
(:mod:`modelwire.providers.sse`) and event parser (:mod:`modelwire.providers.stream_parse`),
instead of iterating litellm's ``CustomStreamWrapper``. Measured on litellm 1.110.2 against the
loopback server, the wrapper:

- fabricates ``finish_reason="stop"`` for a body that ends cleanly before any chunk;
- turns a vLLM ``{"object": "error"}`` event into an empty chunk and then reports only "Stream
  ended before a finish_reason", losing the server's message;
- reports invalid UTF-8, malformed JSON, resets and error events all as one
  ``APIConnectionError`` inside ``MidStreamFallbackError`` (no way to tell a protocol fault from
  a network fault, nor to keep the error's type/code);
- keeps every chunk it yields in ``self.chunks`` (memory grows with the stream, litellm#8620) and
  costs tens of microseconds of pydantic work per chunk;
- drops Azure's ``prompt_filter_results``.

Reading the raw body keeps the transport in litellm while seeing every byte. When a provider's
litellm route does not expose the body (a non-OpenAI-SDK route), :func:`stream_chunks` falls
back to iterating the wrapper with the same timeouts and end checks.

Timeouts run on the event loop clock and only while waiting for the upstream, so a slow consumer
is never blamed on the server: first token (from the attempt start to the first chunk with
content), idle (between data events once content flows; SSE comments and partial lines do not
count), and a total cap. Whatever ends the stream, the body iterator and the response are closed,
which releases or closes the pooled connection.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from modelwire.errors import (
    ContentFilterError,
    EmptyStreamError,
    ModelwireError,
    StreamDurationExceededError,
    StreamIdleTimeoutError,
    StreamInterruptedError,
    StreamRepetitionError,
)
from modelwire.provider import StreamSettings
from modelwire.types import Chunk, Request

from .errors import detached, map_exception, request_id
from .sse import SSEDecoder
from .stream_parse import DONE, EventParser
from .transport import send

if TYPE_CHECKING:
    from .litellm_base import LiteLLMProvider

__all__ = ["stream_chunks"]

T = TypeVar("T")

# After [DONE], read the (usually empty) rest of the body this long so the connection can go back
# to the pool instead of being closed; the openai SDK drains the same way.
_DRAIN_SECONDS = 0.1
# Events handled from one read before yielding to the event loop (keeps loop lag low under load).
_EVENTS_PER_TURN = 16


class _Expired(Exception):
    """A deadline of :func:`_before` passed."""


if sys.version_info >= (3, 11):

    async def _before(awaitable: Awaitable[T], deadline: float) -> T:
        """Await ``awaitable`` until ``deadline`` (loop clock, ``inf`` = none); :class:`_Expired` after.

        Only a timeout of ours becomes :class:`_Expired`; a TimeoutError from inside passes through.
        """
        if deadline == math.inf:
            return await awaitable
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                return await awaitable
        except TimeoutError:
            if timer.expired():
                raise _Expired from None
            raise

else:  # pragma: no cover - Python 3.10 has no asyncio.timeout; wait_for costs a task per call

    async def _before(awaitable: Awaitable[T], deadline: float) -> T:
        if deadline == math.inf:
            return await awaitable
        delay = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            return await asyncio.wait_for(awaitable, delay)
        except asyncio.TimeoutError:
            raise _Expired from None


class _Progress:
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


class _Clock:
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


async def stream_chunks(provider: LiteLLMProvider, request: Request) -> AsyncIterator[Chunk]:
    """The chunks of one stream attempt; raises a :class:`~modelwire.ModelwireError` for any fault.

    :param provider: the provider instance (config, credentials, litellm route).
    :param request: the request; ``options["stream"]`` may override the provider's stream settings.
    """
    settings = StreamSettings.resolve(provider.config, request.options)
    from .litellm_base import litellm

    litellm()  # the first call imports litellm (seconds, blocking): not the server's time to first token
    clock = _Clock(settings)
    args = provider.call_args(request)
    args["stream"] = True
    if provider.config.stream_usage and "stream_options" not in args:
        args["stream_options"] = {"include_usage": True}
    wrapper: Any = None
    body: Any = None
    failure: ModelwireError | None = None
    clean = False
    try:
        wrapper = await _open(provider, request, args, clock)
        response = getattr(getattr(wrapper, "completion_stream", None), "response", None)
        headers: Mapping[str, str] = getattr(response, "headers", None) or {}
        request.state["response_headers"] = headers  # the rate limiter's use_headers (x-ratelimit-*)
        parser = EventParser(provider.name, request.model, headers, request_id(headers))
        progress = _Progress(parser, settings)
        if response is None or not hasattr(response, "aiter_bytes"):
            async for chunk in _from_wrapper(wrapper, clock, progress):
                yield chunk
            if progress.filtered:
                raise progress.filtered_error()
            clean = True
            return
        body = response.aiter_bytes()
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
                    data = await _before(body.__anext__(), deadline)
                except _Expired:
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
        clean = True
    except ModelwireError as exc:
        failure = exc
    finally:
        try:
            if not clean:  # its connection closes before the response goes back to the pool
                await provider.end_attempt(request, clean=False)
        finally:
            await _close(body, wrapper)
    if failure is not None:
        raise detached(failure)


async def _open(provider: LiteLLMProvider, request: Request, args: dict[str, Any], clock: _Clock) -> Any:
    """Send the request through litellm; the first-token and total clocks already run."""
    from .litellm_base import litellm

    deadline, kind = clock.deadline(False, 0.0)
    try:
        return await _before(send(lambda: litellm().acompletion(**args), "client" in args), deadline)
    except _Expired:
        error: ModelwireError = clock.error(kind, EventParser(provider.name, request.model, {}, None))
    except Exception as exc:
        error = map_exception(exc, provider=provider.name, model=request.model)
    raise error  # outside the handler: litellm's exception (it holds the key) stays unreachable


def _finish(decoder: SSEDecoder, progress: _Progress) -> list[Any]:
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
        await _before(consume(), asyncio.get_running_loop().time() + _DRAIN_SECONDS)
    except Exception:  # a late fault cannot change a stream that already said [DONE]
        pass


async def _close(body: Any, wrapper: Any) -> None:
    """Close the body iterator (closes the aiohttp response: an unfinished one drops its
    connection) and litellm's wrapper (closes the SDK stream and restores litellm's context)."""
    for closer in (getattr(body, "aclose", None), getattr(wrapper, "aclose", None)):
        if closer is None:
            continue
        try:
            await closer()
        except Exception:  # cleanup must not hide the error that ended the stream
            pass


async def _from_wrapper(wrapper: Any, clock: _Clock, progress: _Progress) -> AsyncIterator[Chunk]:
    """Fallback for litellm routes without a raw body: iterate the wrapper with the same checks.

    Weaker than the raw path: litellm may hide faults here (see the module docstring).
    """
    parser = progress.parser
    iterator = wrapper.__aiter__()
    anchor = clock.loop.time()
    while True:
        deadline, kind = clock.deadline(progress.content, anchor)
        try:
            raw = await _before(iterator.__anext__(), deadline)
        except StopAsyncIteration:
            if progress.complete:
                return
            raise progress.end_error() from None
        except _Expired:
            if progress.complete:
                return
            raise clock.error(kind, parser) from None
        except Exception as exc:
            original = getattr(exc, "original_exception", None) or exc  # MidStreamFallbackError wraps it
            if progress.complete:
                return
            raise map_exception(original, provider=parser.provider, model=parser.model) from None
        dump = raw.model_dump() if hasattr(raw, "model_dump") else raw
        for chunk in parser.chunks(dump) if isinstance(dump, dict) else ():
            progress.check(chunk)
            yield chunk
        anchor = clock.loop.time()
